"""Write the demo model's domain statistics (what its training data looked like) into its file.

    python examples/demo_domain.py                    # src/napari_dfa/weights/demo.safetensors + demo.json
    python examples/demo_domain.py --model other.safetensors

The demo model was trained on tiles of the synthetic generator (napari_dfa.synth.generate_tile).
Its statistics come from that generator's output in both forms a user meets: 48 held-out tiles
and tissue tiles of three synthetic slides (seeds 1-3; the sample slide, seed 0, stays unseen so
that the tests can check it honestly). Tiles alone would describe tissue mixed at a finer grain
than a slide shows, and slide tiles of the very same generator would then look foreign.

Only metadata changes: the tensors are written back bit for bit; the rest of the metadata (a model
card, provenance) is kept, read fresh just before the write. demo.json gets a short summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from napari_dfa.inference.domain import sample_tissue_tiles
from napari_dfa.model import load_model
from napari_dfa.model.domain import domain_stats, write_domain_metadata
from napari_dfa.slide import open_slide
from napari_dfa.synth import SynthConfig, generate_tile, write_slide

DEMO = Path(__file__).resolve().parent.parent / "src" / "napari_dfa" / "weights" / "demo.safetensors"


def synthetic_images(n_tiles: int = 48, slide_seeds=(1, 2, 3), slide_size: int = 1536,
                     tiles_per_slide: int = 16) -> list:
    """Generator tiles (seeds 1000+, not the training seeds) and tissue tiles of synthetic slides."""
    images = [generate_tile(SynthConfig(), seed=(1000 + i,), size=256)[0] for i in range(n_tiles)]
    with tempfile.TemporaryDirectory() as tmp:
        for seed in slide_seeds:
            path, _ = write_slide(Path(tmp) / f"s{seed}.tif", SynthConfig(), size=(slide_size, slide_size), seed=seed)
            with open_slide(path) as slide:
                images += sample_tissue_tiles(slide, level=0, n=tiles_per_slide, seed=100)
    return images


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEMO), help="checkpoint to stamp (default: the demo model)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    path = Path(args.model)
    images = synthetic_images()
    domain = domain_stats(load_model(path), images, trained_on="synthetic tissue only", limit=len(images))
    write_domain_metadata(path, domain)
    card_path = path.with_suffix(".json")
    if card_path.is_file():
        card = json.loads(card_path.read_text(encoding="utf-8"))  # fresh: others edit this card too
        card["domain"] = {
            "trained_on": domain["trained_on"], "tiles": domain["tiles"], "tile": domain["tile"],
            "rgb_mean": domain["rgb_mean"], "rgb_std": domain["rgb_std"], "stain_vectors": domain["stain_vectors"],
            "stain_reference": domain["stain_reference"],
            "thresholds": {k: g["threshold"] for k, g in domain["groups"].items()},
            "made_by": "python examples/demo_domain.py",
        }
        card["size_bytes"] = path.stat().st_size
        card_path.write_text(json.dumps(card, indent=1), encoding="utf-8")
    print(f"wrote domain statistics of {domain['tiles']} tiles into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
