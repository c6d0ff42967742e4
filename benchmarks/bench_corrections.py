"""Do corrections pay off? A simulated pathologist corrects synthetic slides with known truth.

    python benchmarks/bench_corrections.py                  # 2 slides of 1024², 5 rounds, both class lists
    python benchmarks/bench_corrections.py --quick          # tiny sizes, ~1 min: the script end to end
    python benchmarks/bench_corrections.py --device cuda    # on a GPU

In every round the simulated pathologist looks at what the demo model shows after fine-tuning and
paints the largest wrong regions with their true class (connected components of wrong pixels,
largest first, until a budget of pixels per round is spent; a region bigger than what is left of
the budget gets a brush-sized blob at its most interior point), and confirms the 256² block of the
reviewed half whose labels look most right ("Looks right": the guard judges on verified pixels only,
and strokes painted where the model erred cannot show that it got worse where it was right). The
same accumulated corrections then train three methods:

(a) fine-tuning the demo model, the way the Fine-tune widget does it
    (``napari_dfa.corrections.workflow.finetune_on_corrections`` at its defaults: the pixel head,
    the guard, segment again; a model the guard does not promote is not used);
(b) the same model configuration trained from scratch on the same corrections (its own model
    carried from round to round, ``--steps`` per round, a training learning rate of 2e-3);
(c) a QuPath-style pixel classifier: a random forest on multi-scale pixel features
    (``skimage.feature.multiscale_basic_features``: Gaussian intensity, edges and texture at
    sigmas 1-16), as QuPath's pixel classifier, napari-apoc and convpaint do, retrained every round.

Each is scored by Dice on the tissue pixels never corrected (up to that round; the same pixels for
all three), mean over the classes present there. The pathologist reviews only the left half of each
slide; the right half, never shown, is scored too: leaving the corrected pixels out selects against
method (a)'s errors and so flatters it, the unseen half does not. Two class lists:

- ``demo classes``: the demo model's own five classes;
- ``own classes``: a pathologist's list, ``tumour, invasive front, connective, inflammatory,
  necrosis``: stroma and "other" merged into connective (a rename plus a removal) and a new class,
  the tumour within 32 px (16 µm) of connective tissue (``napari_dfa.model.classes_edit.with_classes``;
  the new class's δ warm-starts from its share of the first round's corrections).

Writes ``OUT/corrections.json``, ``OUT/corrections.md`` (the tables) and ``OUT/corrections.png``
(the curves). Nothing here is timed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

logger = logging.getLogger("bench_corrections")

DEMO_SETUP = "demo classes"
OWN_SETUP = "own classes"
OWN_NAMES = ["tumour", "invasive front", "connective", "inflammatory", "necrosis"]
FRONT_PX = 32  # the invasive front: tumour within this many pixels of connective tissue
MIN_REGION = 16  # wrong regions smaller than this are not worth a stroke
METHODS = {"a": "(a) fine-tune demo", "b": "(b) from scratch", "c": "(c) random forest"}


@dataclass
class Settings:
    slides: tuple[int, ...] = (1, 2)
    size: int = 1024
    rounds: int = 5
    budget: float = 0.015  # share of the tissue pixels painted per round
    steps: int | None = None  # None: what the Fine-tune widget uses on this machine
    scratch_lr: float = 2e-3
    trees: int = 100
    max_samples: int = 40_000  # corrected pixels the forest is fitted on (a random subset)
    device: str = "cpu"
    seed: int = 0
    confirm: int = 1  # blocks the pathologist confirms as right ("Looks right") per round
    confirm_block: int = 256
    setups: tuple[str, ...] = (DEMO_SETUP, OWN_SETUP)


# -- truth and class lists ---------------------------------------------------------------------
def own_truth(truth: np.ndarray) -> np.ndarray:
    """The synthetic truth (1 inflammatory, 2 tumour, 3 stroma, 4 other, 5 necrosis) in the
    pathologist's own list (labels of OWN_NAMES)."""
    connective = (truth == 3) | (truth == 4)
    near = ndimage.distance_transform_edt(~connective) <= FRONT_PX
    out = np.zeros_like(truth)
    out[truth == 2] = 1
    out[(truth == 2) & near] = 2
    out[connective] = 3
    out[truth == 1] = 4
    out[truth == 5] = 5
    return out


def start_model(demo, setup: str, counts: dict[str, int] | None = None):
    """The model a pathologist starts from: the demo, or the demo with their class list."""
    if setup == DEMO_SETUP:
        return demo
    from napari_dfa.model.classes_edit import with_classes

    return with_classes(demo, OWN_NAMES, renames={"stroma": "connective"}, corrected_frequencies=counts)


# -- the simulated pathologist -----------------------------------------------------------------
def paint_round(corrections: np.ndarray, prediction: np.ndarray, truth: np.ndarray, budget: int) -> int:
    """Paint the largest wrong regions (true class) into ``corrections`` until ``budget`` pixels
    are spent; returns the pixels painted."""
    wrong = (truth > 0) & (prediction != truth) & (corrections == 0)
    parts, n = ndimage.label(wrong)
    if n == 0:
        return 0
    sizes = np.bincount(parts.ravel(), minlength=n + 1)[1:]
    boxes = ndimage.find_objects(parts)
    left = budget
    for i in np.argsort(-sizes, kind="stable"):
        if left < MIN_REGION or sizes[i] < MIN_REGION:
            break
        box = boxes[i]
        comp = parts[box] == i + 1
        if comp.sum() > left:
            # A round stroke of `left` pixels where the region is thickest (not a sliver at its edge):
            # the region's pixels nearest to its most interior point.
            dist = ndimage.distance_transform_edt(np.pad(comp, 1))[1:-1, 1:-1]
            cy, cx = np.unravel_index(int(np.argmax(dist)), dist.shape)
            yy, xx = np.nonzero(comp)
            nearest = np.argsort((yy - cy) ** 2 + (xx - cx) ** 2, kind="stable")[:left]
            comp = np.zeros_like(comp)
            comp[yy[nearest], xx[nearest]] = True
        target = corrections[box]
        target[comp] = truth[box][comp]
        left -= int(comp.sum())
    return budget - left


def dice_scores(prediction, truth, mask, k: int) -> dict:
    """Per-class Dice over ``mask`` and their mean over the classes present in the truth there."""
    p, t = prediction[mask], truth[mask]
    dice = {}
    for c in range(1, k + 1):
        tp = int(((p == c) & (t == c)).sum())
        denom = int((p == c).sum() + (t == c).sum())
        dice[c] = 2 * tp / denom if (t == c).any() else None
    present = [v for v in dice.values() if v is not None]
    return {"mdice": float(np.mean(present)) if present else None, "dice": dice,
            "accuracy": float((p == t).mean()) if p.size else None}


# -- (c) the pixel classifier --------------------------------------------------------------------
def pixel_features(rgb: np.ndarray) -> np.ndarray:
    from skimage.feature import multiscale_basic_features

    return multiscale_basic_features(rgb, channel_axis=-1, intensity=True, edges=True, texture=True,
                                     sigma_min=1, sigma_max=16).astype(np.float32)


def forest_predict(features: np.ndarray, corrections: np.ndarray, settings: Settings, round_: int) -> np.ndarray:
    from sklearn.ensemble import RandomForestClassifier

    ys, xs = np.nonzero(corrections)
    rng = np.random.default_rng([settings.seed, round_])
    if len(ys) > settings.max_samples:
        pick = rng.choice(len(ys), settings.max_samples, replace=False)
        ys, xs = ys[pick], xs[pick]
    forest = RandomForestClassifier(n_estimators=settings.trees, n_jobs=2, random_state=settings.seed)
    forest.fit(features[ys, xs], corrections[ys, xs])
    h, w, f = features.shape
    out = np.empty(h * w, np.uint8)
    flat = features.reshape(-1, f)
    for i in range(0, h * w, 262_144):  # in slices: predict_proba of a whole slide at once is GBs
        out[i:i + 262_144] = forest.predict(flat[i:i + 262_144])
    return out.reshape(h, w)


# -- one slide, one class list -------------------------------------------------------------------
def confirm_blocks(pred, truth, half: int, settings: Settings, done: set) -> list[tuple[int, int]]:
    """The ``settings.confirm`` blocks of the reviewed half not confirmed yet where the current
    labels agree most with the truth (over tissue): what "Looks right" is clicked on."""
    b = settings.confirm_block
    scores = []
    for y in range(0, truth.shape[0] - b + 1, b):
        for x in range(0, half - b + 1, b):
            t = truth[y:y + b, x:x + b] > 0
            if (y, x) not in done and t.mean() > 0.5:
                scores.append(((pred[y:y + b, x:x + b] == truth[y:y + b, x:x + b])[t].mean(), y, x))
    return [(y, x) for _, y, x in sorted(scores)[::-1][:settings.confirm]]


def run_session(demo, rgb, truth, setup: str, settings: Settings, work: Path) -> list[dict]:
    """All rounds for one slide and one class list; returns one row per round.

    The pathologist reviews the left half of the slide; the right half is never shown to them, so
    its Dice is free of the selection that "never corrected" has (the corrected pixels are where
    method (a) was wrong, so leaving them out flatters every method, (a) most)."""
    from napari_dfa.corrections import CorrectionStore
    from napari_dfa.corrections.workflow import ReplaySpec, Resegment, finetune_on_corrections
    from napari_dfa.inference import Runtime, Tiling, segment
    from napari_dfa.model import Segmenter
    from napari_dfa.training import finetune

    h, w = truth.shape
    half = w // 2
    review = (0, 0, h, half)  # (y0, x0, h, w) of the reviewed region, level 0
    names = list(demo.class_names) if setup == DEMO_SETUP else OWN_NAMES
    k = len(names)
    tissue = truth > 0
    in_review = np.zeros_like(tissue)
    in_review[:, :half] = True
    budget = max(MIN_REGION, int(settings.budget * (tissue & in_review).sum()))

    def labels_of(model):
        return np.asarray(segment(rgb, model, level=0, tiling=Tiling(tile=512, overlap=64),
                                  runtime=Runtime(device=settings.device)).labels)

    def read_rgb(level, box):
        return rgb[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]

    store = CorrectionStore(work / f"{setup.replace(' ', '_')}.corrections.zarr", slide_path=str(work / "slide"),
                            class_names=names)
    patch = store.create_patch(level=0, region=review)
    corrections = np.zeros_like(truth)  # whole slide; only the reviewed half is ever painted
    model_a = start_model(demo, setup)
    pred_a = labels_of(model_a)
    model_b = None
    untrained = Segmenter.from_config(demo.config.replace(num_classes=k), class_names=names,
                                      device=settings.device)
    preds = {"a": pred_a, "b": labels_of(untrained), "c": None}
    features = pixel_features(rgb)
    confirmed: set[tuple[int, int]] = set()
    rows = []
    for r in range(settings.rounds + 1):
        outcome = None
        painted = 0
        if r > 0:
            view = corrections[:, :half]  # a view: painting it paints `corrections`
            painted = paint_round(view, pred_a[:, :half], truth[:, :half], budget)
            store.write(patch.key, (0, 0), view)
            # ... and confirms the blocks of the reviewed half that look right (the current labels
            # agree most with the truth there), as a careful pathologist does with "Looks right"
            for y, x in confirm_blocks(pred_a, truth, half, settings, confirmed):
                b = settings.confirm_block
                # after fixing what was wrong there: the truth
                store.confirm_region(level=0, region=(y, x, b, b), labels=truth[y:y + b, x:x + b])
                confirmed.add((y, x))
            counts = {n: int((corrections == i + 1).sum()) for i, n in enumerate(names)}
            if r == 1 and setup == OWN_SETUP:  # the new class's δ from its share of what was painted
                model_a = start_model(demo, setup, counts)
            # (a) the Fine-tune widget's loop (segment again: the whole slide, for the held-out half)
            outcome = finetune_on_corrections(
                model_a, store, read_rgb, guard=True,  # the Fine-tune click's defaults (its own steps)
                replay=ReplaySpec(level=0, region=review, labels=pred_a[:, :half], corrected=view),
                resegment=Resegment(source=rgb, level=0, region=(0, 0, h, w)))
            model_a = outcome.segmenter
            if outcome.kept:
                pred_a = outcome.relabelled
            # (b) the same corrections, a model of the same configuration from scratch
            if model_b is None:
                model_b = Segmenter.from_config(demo.config.replace(num_classes=k), class_names=names,
                                                frequencies=[max(counts[n], 1) for n in names],
                                                device=settings.device)
            result = finetune(model_b, [(rgb[:, :half], view)], steps=settings.steps,
                              lr=settings.scratch_lr, seed=settings.seed + r)
            model_b = result.segmenter
            # (c) the pixel classifier
            preds = {"a": pred_a, "b": labels_of(model_b),
                     "c": forest_predict(features, corrections, settings, r)}
        never = tissue & in_review & (corrections == 0)
        held_out = tissue & ~in_review
        row = {"round": r, "painted": painted, "corrected": int((corrections > 0).sum()),
               "corrected_share": float((corrections > 0).sum() / (tissue & in_review).sum()),
               "kept": None if outcome is None else bool(outcome.kept),
               "held_out_corrections": None if outcome is None else [_num(outcome.old_score),
                                                                      _num(outcome.new_score)]}
        for key, pred in preds.items():
            row[key] = None if pred is None else dice_scores(pred, truth, never, k)
            row[f"{key}_unseen"] = None if pred is None else dice_scores(pred, truth, held_out, k)
        rows.append(row)
        logger.info("%s round %d: corrected %.1f%% | never corrected: %s | unseen half: %s", setup, r,
                    100 * row["corrected_share"], "  ".join(f"{m} {_fmt(row[m])}" for m in METHODS),
                    "  ".join(f"{m} {_fmt(row[m + '_unseen'])}" for m in METHODS))
    return rows


def _num(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _fmt(score) -> str:
    return "—" if not score or score["mdice"] is None else f"{score['mdice']:.3f}"


# -- summary ------------------------------------------------------------------------------------
def mean_rows(sessions: list[list[dict]]) -> list[dict]:
    """Round-by-round mean over slides of the corrected share and each method's mDice."""
    out = []
    for r in range(len(sessions[0])):
        rows = [s[r] for s in sessions]
        row = {"round": r, "corrected_share": float(np.mean([x["corrected_share"] for x in rows])),
               "kept": [x["kept"] for x in rows]}
        for m in [*METHODS, *(f"{m}_unseen" for m in METHODS)]:
            vals = [x[m]["mdice"] for x in rows if x[m] is not None and x[m]["mdice"] is not None]
            row[m] = float(np.mean(vals)) if len(vals) == len(rows) else None
        out.append(row)
    return out


def markdown(summary: dict, settings: Settings, machine: str, command: str) -> str:
    lines = ["## Do corrections pay off? (simulated pathologist, synthetic slides)", "",
             f"Command: `{command}`  ", f"Machine: {machine}  ",
             f"Slides: {len(settings.slides)} synthetic slides of {settings.size}² px (seeds "
             f"{', '.join(map(str, settings.slides))}), {settings.rounds} rounds, "
             f"{100 * settings.budget:.1f} % of the tissue painted per round, "
             f"{summary['steps']} fine-tuning steps per round, random forest of {settings.trees} trees.  ",
             "Score: mean Dice over classes, mean over slides, on the reviewed half's tissue pixels never "
             "corrected, and (after the slash) on the other half, never shown to the pathologist. "
             "Round 0: before any correction (the forest has nothing to learn from yet).", ""]
    for setup, rows in summary["setups"].items():
        names = summary["class_names"][setup]
        lines += [f"### {setup}: {', '.join(names)}", "",
                  "| round | corrected (% of tissue) | " + " | ".join(METHODS.values()) + " | (a) kept by the guard |",
                  "| ---: | ---: | " + " | ".join("---:" for _ in METHODS) + " | --- |"]
        for row in rows:
            kept = "" if row["round"] == 0 else ", ".join("yes" if k else "no" for k in row["kept"])
            cells = " | ".join("—" if row[m] is None else f"{row[m]:.3f} / {row[m + '_unseen']:.3f}" for m in METHODS)
            lines.append(f"| {row['round']} | {100 * row['corrected_share']:.1f} | {cells} | {kept} |")
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setups = list(summary["setups"])
    fig, axes = plt.subplots(2, len(setups), figsize=(5.2 * len(setups), 7.6), squeeze=False, sharey=True)
    styles = {"a": ("tab:red", "o"), "b": ("tab:gray", "s"), "c": ("tab:blue", "^")}
    for col, setup in enumerate(setups):
        rows = summary["setups"][setup]
        for row_i, suffix in enumerate(("", "_unseen")):
            ax = axes[row_i][col]
            for m, label in METHODS.items():
                pts = [(100 * r["corrected_share"], r[m + suffix]) for r in rows if r[m + suffix] is not None]
                if pts:
                    x, y = zip(*pts)
                    ax.plot(x, y, marker=styles[m][1], color=styles[m][0], label=label)
            ax.set_title(f"{setup}: " + ("reviewed half, never corrected" if not suffix else "unseen half"),
                         fontsize=10)
            ax.set_xlabel("corrected tissue of the reviewed half (%)")
            ax.grid(alpha=0.3)
    for row_i in range(2):
        axes[row_i][0].set_ylabel("mean Dice")
    axes[0][0].set_ylim(0, 1)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(METHODS), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(settings: Settings, out: Path, command: str) -> dict:
    import tifffile

    from napari_dfa.corrections.workflow import default_steps
    from napari_dfa.model import load_model
    from napari_dfa.slide import open_slide
    from napari_dfa.synth import SynthConfig, write_slide
    from napari_dfa.training.throughput import machine_info  # what `napari-dfa bench` records

    out.mkdir(parents=True, exist_ok=True)
    if settings.steps is None:
        settings.steps = default_steps()
    demo = load_model("demo", device=settings.device)
    sessions = {setup: [] for setup in settings.setups}
    with tempfile.TemporaryDirectory(prefix="bench-corrections-") as tmp:
        for seed in settings.slides:
            path, truth_path = write_slide(Path(tmp) / f"slide_{seed}.tif", SynthConfig(),
                                           size=(settings.size, settings.size), seed=seed)
            with open_slide(path) as slide:
                rgb = np.ascontiguousarray(slide.read_region(0, (0, 0, settings.size, settings.size)))
            truth = np.asarray(tifffile.imread(truth_path)).astype(np.uint8)
            for setup in sessions:
                t = truth if setup == DEMO_SETUP else own_truth(truth)
                work = Path(tmp) / f"s{seed}"
                work.mkdir(exist_ok=True)
                sessions[setup].append(run_session(demo, rgb, t, setup, settings, work))
    summary = {
        "command": command, "machine": machine_info(), "steps": settings.steps,
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "class_names": {s: list(demo.class_names) if s == DEMO_SETUP else OWN_NAMES for s in sessions},
        "setups": {s: mean_rows(v) for s, v in sessions.items()},
        "sessions": {s: v for s, v in sessions.items()},
    }
    (out / "corrections.json").write_text(json.dumps(summary, indent=1, default=_json), encoding="utf-8")
    (out / "corrections.md").write_text(markdown(summary, settings, summary["machine"], command), encoding="utf-8")
    plot(summary, out / "corrections.png")
    return summary


def _json(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(type(obj).__name__)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench-corrections", help="folder for corrections.{json,md,png}")
    ap.add_argument("--quick", action="store_true", help="one small slide, 2 rounds, few steps and trees")
    ap.add_argument("--slides", default=None, help="comma list of slide seeds (default 1,2)")
    ap.add_argument("--size", type=int, default=None, help="slide edge in pixels (default 1024)")
    ap.add_argument("--rounds", type=int, default=None, help="correction rounds (default 5)")
    ap.add_argument("--budget", type=float, default=None, help="share of the tissue painted per round (0.015)")
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps per round (default: the widget's)")
    ap.add_argument("--trees", type=int, default=None, help="random forest trees (default 100)")
    ap.add_argument("--setups", default=None, help="comma list of 'demo', 'own' (default both)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    settings = Settings(device=args.device)
    if args.quick:
        settings = Settings(slides=(1,), size=256, rounds=2, budget=0.05, steps=4, trees=10, device=args.device)
    for key in ("size", "rounds", "budget", "steps", "trees"):
        if getattr(args, key) is not None:
            setattr(settings, key, getattr(args, key))
    if args.slides:
        settings.slides = tuple(int(s) for s in args.slides.split(","))
    if args.setups:
        settings.setups = tuple({"demo": DEMO_SETUP, "own": OWN_SETUP}[s.strip()] for s in args.setups.split(","))
    command = "python benchmarks/bench_corrections.py " + " ".join(argv if argv is not None else sys.argv[1:])
    summary = run(settings, Path(args.out), command.strip())
    print((Path(args.out) / "corrections.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out}/corrections.json, corrections.md and corrections.png")
    return 0 if summary else 1


if __name__ == "__main__":
    sys.exit(main())
