"""Make docs/images/synth_tiles.png: synthetic H&E tiles beside their masks, with the class legend.

    python examples/make_synth_figure.py [--out docs/images/synth_tiles.png] [--seed 0]

Each column is one tile from ``napari_dfa.synth.generate_tile`` (default config); the top row is
the image, the bottom row the mask in the class colours (black = ignore / outside the ROI). The
legend gives each class's configured pixel frequency and difficulty (and its look-alike).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from napari_dfa.synth import SynthConfig, generate_tile  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parents[1] / "docs" / "images" / "synth_tiles.png"
    parser.add_argument("--out", default=str(default_out))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiles", type=int, default=5)
    args = parser.parse_args(argv)

    config = SynthConfig()
    palette = np.array([(0, 0, 0), *config.class_colors], np.uint8)
    fig, axes = plt.subplots(2, args.tiles, figsize=(2.6 * args.tiles, 5.9), dpi=110)
    for i in range(args.tiles):
        rgb, mask = generate_tile(config, (args.seed, i), size=256)
        axes[0, i].imshow(rgb)
        axes[1, i].imshow(palette[mask], interpolation="nearest")
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, i].set_title(f"seed ({args.seed}, {i})", fontsize=9)
    axes[0, 0].set_ylabel("image", fontsize=10)
    axes[1, 0].set_ylabel("mask", fontsize=10)

    handles = [Patch(facecolor="black", label="ignore (outside ROI)")]
    for c, color in zip(config.classes, config.class_colors):
        like = f", looks like {c.lookalike}" if c.lookalike else ""
        handles.append(Patch(facecolor=np.array(color) / 255,
                             label=f"{c.name}: {c.frequency:.0%} of pixels, difficulty {c.difficulty:.2f}{like}"))
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8.5, frameon=False)
    fig.suptitle("napari-dfa synthetic H&E: class frequency and difficulty set independently", fontsize=11)
    fig.tight_layout(rect=(0, 0.13, 1, 0.96))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
