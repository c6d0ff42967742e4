"""A simulated pathologist on a slide with truth: rounds of strokes, our loop against a pixel
classifier, scored where nobody painted (no Qt).

What ``napari-dfa bench-corrections`` and ``benchmarks/bench_realpix.py`` run. Each round the
pathologist draws ``side``² squares of the true class (``per_class`` per class) on ``tiles_per_round``
tiles of the region that no earlier round touched, every class on at least one of them. Both methods
learn from every square so far:

- ours: :func:`~napari_dfa.corrections.workflow.finetune_on_corrections` (method ``auto``, the guard
  on); a model the guard does not promote is not used, the round keeps the previous one;
- the anchor (when scikit-learn is installed): a random forest (100 trees, depth 12) on
  ``skimage.feature.multiscale_basic_features`` (σ 1–16), as QuPath's pixel classifier, trained on
  the same squares.

Score: mean Dice over the classes on the truth's pixels in the tiles no round corrected (the same
pixels for every round and both methods).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError

logger = logging.getLogger(__name__)


def tile_grid(shape: tuple[int, int], tile: int) -> list[tuple[int, int]]:
    """Top-left corners of the whole ``tile``² tiles of an image."""
    return [(y, x) for y in range(0, shape[0] - tile + 1, tile) for x in range(0, shape[1] - tile + 1, tile)]


def plan_rounds(truth: np.ndarray, k: int, *, tile: int, rounds: int, tiles_per_round: int,
                seed: int) -> list[list[tuple[int, int]]]:
    """The tiles each round corrects: per class one unused tile where that class is the majority,
    then any unused tiles holding truth, none twice."""
    rng = np.random.default_rng(seed + 100)
    tiles = tile_grid(truth.shape, tile)
    major = {}
    for y, x in tiles:
        counts = np.bincount(truth[y:y + tile, x:x + tile].ravel(), minlength=k + 1)
        if counts[1:].sum():
            major[(y, x)] = int(counts[1:].argmax()) + 1
    used: set = set()
    out = []
    for _ in range(rounds):
        chosen = []
        for c in range(1, k + 1):
            free = [t for t, m in major.items() if m == c and t not in used and t not in chosen]
            if free:
                chosen.append(free[int(rng.integers(len(free)))])
        rest = [t for t in major if t not in used and t not in chosen]
        want = max(0, tiles_per_round - len(chosen))
        chosen += [rest[i] for i in rng.permutation(len(rest))[:want]]
        if not chosen:
            raise DataError("no tile with truth left for another round: fewer rounds, or smaller --tile")
        used |= set(chosen)
        out.append(chosen)
    return out


def squares(truth: np.ndarray, k: int, tiles: Sequence[tuple[int, int]], *, tile: int, per_class: int = 6,
            side: int = 24, seed: int = 0) -> np.ndarray:
    """``per_class`` squares of ``side`` px per class, each wholly of one true class and apart from
    the others, spread over the ``tiles`` that hold room for one (a class with none gets none)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed + 200)
    out = np.zeros_like(truth)
    for c in range(1, k + 1):
        # top-left corners where a square fits inside class c, per tile
        fits = []
        for y, x in tiles:
            inside = ndimage.minimum_filter(truth[y:y + tile, x:x + tile] == c, size=side, mode="constant",
                                            cval=False, origin=-(side // 2))
            ys, xs = np.nonzero(inside[:tile - side + 1, :tile - side + 1])
            if ys.size:
                fits.append((y + ys, x + xs))
        drawn = 0
        for attempt in range(per_class * 50):
            if drawn >= per_class or not fits:
                break
            ys, xs = fits[(drawn + attempt) % len(fits)]
            i = int(rng.integers(ys.size))
            y, x = int(ys[i]), int(xs[i])
            if not out[max(0, y - 4):y + side + 4, max(0, x - 4):x + side + 4].any():
                out[y:y + side, x:x + side] = c
                drawn += 1
    return out


def mean_dice(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray, k: int) -> tuple[float, list]:
    """(mean Dice over the classes present in ``truth[mask]``, per class: Dice or None if absent)."""
    per = []
    for c in range(1, k + 1):
        p, g = (pred == c) & mask, (truth == c) & mask
        per.append(float(2 * (p & g).sum() / (p.sum() + g.sum())) if g.any() else None)
    present = [d for d in per if d is not None]
    return (float(np.mean(present)) if present else float("nan")), per


def forest_labels(rgb: np.ndarray, corrections: np.ndarray, seed: int = 0) -> np.ndarray:
    """QuPath's pixel classifier, as the anchor: a random forest (100 trees, depth 12) on
    ``multiscale_basic_features`` (σ 1–16) of ``rgb``, trained on the corrected pixels."""
    try:
        from sklearn.ensemble import RandomForestClassifier
        from skimage.feature import multiscale_basic_features
    except ImportError as exc:
        raise DataError(f"the random-forest anchor needs scikit-learn and scikit-image ({exc}); "
                        "pip install 'napari-dfa[bench]', or pass --no-forest") from None
    f = multiscale_basic_features(rgb, channel_axis=-1, sigma_min=1, sigma_max=16)
    ys, xs = np.nonzero(corrections)
    rf = RandomForestClassifier(n_estimators=100, max_depth=12, n_jobs=2, random_state=seed)
    rf.fit(f[ys, xs], corrections[ys, xs])
    return rf.predict(f.reshape(-1, f.shape[-1])).reshape(corrections.shape).astype(np.uint8)


def run_curve(segmenter, rgb: np.ndarray, truth: np.ndarray, names: Sequence[str], *, rounds: int = 3,
              tile: int = 256, tiles_per_round: int = 8, per_class: int = 6, side: int = 24, seed: int = 0,
              forest: bool = True, work: Path | None = None, log: Callable[[dict], None] | None = None) -> list[dict]:
    """Every round of the simulated pathologist on one image (``rgb`` H×W×3 uint8, ``truth`` H×W
    labels of ``names``, 0 = no truth); returns one row per round."""
    from ..inference import segment
    from .store import CorrectionStore
    from .workflow import finetune_on_corrections

    names = list(names)
    k = len(names)
    if rgb.shape[:2] != truth.shape:
        raise DataError(f"the truth {truth.shape} does not cover the image {rgb.shape[:2]}")
    plan = plan_rounds(truth, k, tile=tile, rounds=rounds, tiles_per_round=tiles_per_round, seed=seed)
    scored = truth > 0
    for y, x in sum(plan, []):
        scored[y:y + tile, x:x + tile] = False
    if not scored.any():
        raise DataError("every tile with truth gets corrected: nothing is left to score (fewer rounds)")
    read = lambda level, box: rgb[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="napari-dfa-simulate-", dir=work) as tmp:
        store = CorrectionStore(Path(tmp) / "corrections.zarr", class_names=names)
        patch = store.create_patch(level=0, region=(0, 0, *truth.shape))
        model, corr, rows = segmenter, np.zeros_like(truth), []
        # The model before any round, its labels matched to ``names`` by class name (a class it
        # lacks scores 0): the first round's "before".
        from .guard import label_map

        lut = label_map(model.class_names, names)
        before_d = mean_dice(lut[np.asarray(segment(rgb, model).labels)], truth, scored, k)[0]
        for r, tiles in enumerate(plan, start=1):
            new = squares(truth, k, tiles, tile=tile, per_class=per_class, side=side, seed=seed * 10 + r)
            corr = np.where(new > 0, new, corr).astype(np.uint8)
            store.write(patch.key, (0, 0), corr)
            t0 = time.monotonic()
            outcome = finetune_on_corrections(model, store, read, class_names=names, seed=seed)
            ours_s = time.monotonic() - t0
            if outcome.kept:
                model = outcome.segmenter
            ours = (np.asarray(segment(rgb, model).labels) if list(model.class_names) == names
                    else np.zeros_like(truth))  # no model of these classes yet
            ours_d, ours_per = mean_dice(ours, truth, scored, k)
            # The model fine-tuned this round, kept or not: whether the verdict picked the better one.
            cand = ours if outcome.kept else np.asarray(segment(rgb, outcome.candidate).labels)
            cand_d, cand_per = mean_dice(cand, truth, scored, k)
            row = {"seed": seed, "round": r, "corrected_pixels": int((corr > 0).sum()), "verdict": outcome.verdict.status,
                   "reason": outcome.verdict.reason, "method": outcome.result.method,
                   "other": outcome.result.alternative, "ours": ours_d, "ours_per_class": ours_per,
                   "candidate": cand_d, "candidate_per_class": cand_per,
                   "before": rows[-1]["ours"] if rows else before_d,
                   "held_out": [outcome.result.old_score, outcome.result.new_score],
                   "ours_seconds": round(ours_s, 1)}
            if forest:
                t0 = time.monotonic()
                rf = forest_labels(rgb, corr, seed)
                row["forest_seconds"] = round(time.monotonic() - t0, 1)
                row["forest"], row["forest_per_class"] = mean_dice(rf, truth, scored, k)
            rows.append(row)
            if log is not None:
                log(row)
    return rows


def markdown(rows: list[dict], command: str, machine: str) -> str:
    """The curve as a Markdown table: per round, ours and the forest (mean ± sd over seeds)."""
    rounds = sorted({r["round"] for r in rows})
    seeds = len({r["seed"] for r in rows})
    forest = all("forest" in r for r in rows)
    lines = [f"`{command}` on {machine} ({seeds} seed{'s' if seeds > 1 else ''})", "",
             "| round | corrected px | ours mDice | " + ("random forest | ours − forest | " if forest else "")
             + "verdicts | method kept |",
             "| ---: | ---: | ---: | " + ("---: | ---: | " if forest else "") + "--- | --- |"]
    for r in rounds:
        sub = [x for x in rows if x["round"] == r]
        o = np.array([x["ours"] for x in sub])
        cells = [str(r), f"{np.mean([x['corrected_pixels'] for x in sub]):.0f}", f"{o.mean():.3f} ± {o.std():.3f}"]
        if forest:
            f = np.array([x["forest"] for x in sub])
            cells += [f"{f.mean():.3f} ± {f.std():.3f}", f"{(o - f).mean():+.3f} (min {(o - f).min():+.3f})"]
        cells += [", ".join(f"{v} {sum(x['verdict'] == v for x in sub)}" for v in sorted({x["verdict"] for x in sub})),
                  ", ".join(f"{m} {sum(x['method'] == m for x in sub)}" for m in sorted({x["method"] for x in sub}))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """The curve as a PNG: mDice where nobody painted against the corrected pixels, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = sorted({r["round"] for r in rows})
    xs = [np.mean([x["corrected_pixels"] for x in rows if x["round"] == r]) for r in rounds]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("ours", "napari-dfa (guarded)"), ("forest", "random forest")):
        if all(key in x for x in rows):
            ax.plot(xs, [np.mean([x[key] for x in rows if x["round"] == r]) for r in rounds], marker="o", label=label)
    ax.set_xlabel("corrected pixels")
    ax.set_ylabel("mDice where nobody painted")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(rows: list[dict], out: Path, *, name: str, command: str, machine: str) -> dict[str, Path]:
    """``OUT/NAME.json``, ``.md`` and ``.png``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "markdown": out / f"{name}.md", "curve": out / f"{name}.png"}
    paths["json"].write_text(json.dumps(rows, indent=1, default=lambda v: None if v != v else str(v)))
    paths["markdown"].write_text(markdown(rows, command, machine))
    plot(rows, paths["curve"])
    return paths
