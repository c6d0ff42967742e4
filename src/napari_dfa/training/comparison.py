"""The method comparison (``napari-dfa bench``): does the learned class bias help, on this data?

Every method trains on the same data with the same seeds. A seed fixes the initial weights, the data
order and the augmentation, so run ``(method, seed)`` and ``(none, seed)`` differ only in the method:
the comparison is *paired*, per seed, and its statistics work on the per-seed differences.

Methods (:data:`METHODS`):

- ``none``          plain class-token decoder (b = 0): the reference of every paired difference
- ``cffa``          fixed frequency prior γ·log(1 − f_c)
- ``difficulty``    fixed γ·log(1 − Dice_c), Dice_c from the ``none`` run's validation of the same seed
- ``dfa``           learned δ_c in the attention, warm-started from the prior (the paper's method)
- ``dfa-out``       the same δ_c, also added to class c's output logits (it reaches the masks)
- ``dfa-warm-only`` ``dfa`` with δ frozen at its warm start (``delta_lr_multiplier = 0``)
- ``dfa-cold``      ``dfa`` with δ starting at 0 (``delta_init_scale = 0``)
- ``logit_adjust``  bias ``none``, loss on ``logits + τ·log f_c`` (τ = 1) in training only
  (Menon et al., ICLR 2021), plain logits at inference
- ``weighted_ce``   bias ``none``, inverse-frequency class-weighted cross-entropy

Reported per class on the test split: Dice (dataset level) as mean ± sd over seeds; the paired
difference to ``none`` with a two-sided sign test and a bootstrap 95 % interval of the mean
difference (seeds resampled); and a mechanism probe: how many pixels change label, and how the
class's Dice changes, when b_c is raised by 1 (the attention bias, which in ``dfa-out`` also shifts
the output) against raising that class's output logit by 1.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .config import TrainConfig, read_toml
from .datasets import folder_config, read_class_list  # noqa: F401 - a folder's classes: one reader for all commands

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a label and the recipe changes it makes."""

    label: str
    model: dict
    train: dict


METHODS: dict[str, Method] = {
    "none": Method("none (b = 0)", {"bias_mode": "none"}, {}),
    "cffa": Method("CFFA prior γ·log(1−f)", {"bias_mode": "cffa"}, {}),
    "difficulty": Method("difficulty γ·log(1−Dice)", {"bias_mode": "difficulty"}, {}),
    "dfa": Method("**DFA** (learned δ)", {"bias_mode": "dfa"}, {}),
    "dfa-out": Method("DFA-out (δ also on the output logits)", {"bias_mode": "dfa-out"}, {}),
    "dfa-warm-only": Method("DFA, δ frozen at its warm start", {"bias_mode": "dfa", "delta_lr_multiplier": 0.0}, {}),
    "dfa-cold": Method("DFA, cold start (δ₀ = 0)", {"bias_mode": "dfa", "delta_init_scale": 0.0}, {}),
    "logit_adjust": Method("logit adjustment τ·log f (τ = 1)", {"bias_mode": "none"}, {"logit_adjust_tau": 1.0}),
    "weighted_ce": Method("class-weighted CE", {"bias_mode": "none"}, {"loss": "weighted_ce"}),
}
DEFAULT_METHODS = ("none", "dfa", "dfa-out", "difficulty", "logit_adjust")
REFERENCE = "none"
# Six seeds is the fewest for which a two-sided sign test can reach p < 0.05 (2/2^6 = 0.031).
DEFAULT_SEEDS = 6
SIGNIFICANCE = 0.05
BOOTSTRAP_SAMPLES = 10_000


def comparison_config(*, epochs: int = 15, preset: str = "tiny", tile: int = 128, n_train: int = 64, n_val: int = 16,
                      n_test: int = 32, batch_size: int = 8, lr: float = 3e-3, data_seed: int = 0) -> TrainConfig:
    """The recipe every method of the comparison shares (CPU-sized synthetic data by default)."""
    return TrainConfig(
        name="bench", epochs=epochs, batch_size=batch_size, lr=lr, schedule="cosine", warmup_steps=10,
        model={"preset": preset, "gamma": 2.0, "delta_init_scale": 0.5, "delta_lr_multiplier": 20.0},
    ).replace(data={"kind": "synthetic", "classes": "synthetic", "crop": tile, "synth_tile": tile,
                    "synth_n_train": n_train, "synth_n_val": n_val, "synth_n_test": n_test, "synth_seed": data_seed})


# -- configuration files and data folders --------------------------------------------------------------

BENCH_KEYS = {"seeds": int, "methods": list, "jobs": int, "probe_images": int}


def load_comparison_toml(path, base: TrainConfig | None = None) -> tuple[TrainConfig, dict]:
    """Read a comparison file: any training-recipe keys (``epochs``, ``batch_size``, ``[model]``,
    ``[data]``, ``[augment]``, ...) over ``base``, a ``[synth]`` table (the synthetic generator:
    class frequencies, difficulties, see :class:`napari_dfa.synth.SynthConfig`) and a ``[bench]``
    table (``seeds``, ``methods``, ``jobs``, ``probe_images``). A file holding only ``[synth]`` is fine.

    Returns ``(recipe, bench settings)``; unknown keys raise ConfigError naming the file.
    """
    path = Path(path)
    raw = read_toml(path, what="comparison config", example="training/gpu_bench.toml")
    bench = raw.pop("bench", {})
    synth_table = raw.pop("synth", None)
    if not isinstance(bench, dict):
        raise ConfigError(f"{path}: [bench] must be a table")
    unknown = sorted(set(bench) - set(BENCH_KEYS))
    if unknown:
        raise ConfigError(f"{path} [bench]: unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(BENCH_KEYS))}")
    for key, kind in BENCH_KEYS.items():
        if key in bench and not isinstance(bench[key], kind):
            raise ConfigError(f"{path} [bench]: {key} must be a {kind.__name__}, got {bench[key]!r}")
    merged = (base or comparison_config()).to_dict()
    for key, value in raw.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    data = merged.setdefault("data", {})
    if data.get("root") and not Path(data["root"]).is_absolute():
        data["root"] = str((path.parent / data["root"]).resolve())
    if synth_table is not None:
        if not isinstance(synth_table, dict):
            raise ConfigError(f"{path}: [synth] must be a table")
        from ..synth import SynthConfig

        SynthConfig.from_dict(synth_table, source=f"{path} [synth]")  # validate now, name the file
        data["synth"] = synth_table
    return TrainConfig.from_dict(merged, source=str(path)), dict(bench)


def _synth_config(data):
    from .. import synth

    return synth.SynthConfig.from_dict(dict(data.synth)) if data.synth else synth.SynthConfig()


def _with_synth_classes(config: TrainConfig) -> TrainConfig:
    """Synthetic data: the class list is the generator's (a [synth] table may rename classes)."""
    if config.data.kind != "synthetic" or config.data.class_names:
        return config
    cfg = _synth_config(config.data)
    return config.replace(data={"class_names": cfg.class_names, "class_colors": cfg.class_colors})


def class_difficulty(config: TrainConfig, root: Path) -> dict:
    """``{name: (difficulty, look-alike)}`` where the data says it (synthetic generator or a
    folder's synth.json); empty otherwise."""
    try:
        if config.data.kind == "synthetic":
            return {c.name: (c.difficulty, c.lookalike) for c in _synth_config(config.data).classes}
        path = Path(root) / "synth.json"
        if path.is_file():
            entries = json.loads(path.read_text(encoding="utf-8")).get("classes", [])
            return {e["name"]: (e.get("difficulty"), e.get("lookalike")) for e in entries if "name" in e}
    except (ConfigError, OSError, ValueError, TypeError, KeyError, AttributeError):
        pass  # the table works without the difficulty column
    return {}


def describe_data(config: TrainConfig, root: Path) -> str:
    d = config.data
    if d.kind == "synthetic":
        what = "synthetic generator" + (" with a [synth] table" if d.synth else " (default classes)")
        return (f"{what}: {d.synth_n_train} train / {d.synth_n_val} val / {d.synth_n_test} test tiles of "
                f"{d.synth_tile}² px, data seed {d.synth_seed}, crops {d.crop}² px")
    return f"SAM-Path folder `{root}`, crops {d.crop}² px"


# -- one run -------------------------------------------------------------------------------------------

def method_config(base: TrainConfig, method: str, seed: int, difficulty_dice=None) -> TrainConfig:
    """The recipe of ``method`` with ``seed`` (``difficulty`` needs the none run's Dice)."""
    spec = METHODS[method]
    model = dict(spec.model)
    if method == "difficulty":
        if difficulty_dice is None:
            raise ConfigError("method difficulty needs the none run's validation Dice of the same seed")
        model["difficulty_dice"] = [float(v) for v in difficulty_dice]
    return base.replace(seed=seed, model=model, **spec.train)


def _run_one(task: dict) -> dict:
    """Train, test and probe one (method, seed); runs in this process or in a worker process."""
    from ..model import load_model
    from .datasets import open_split
    from .evaluation import evaluate
    from .trainer import train

    if task.get("threads"):
        torch.set_num_threads(task["threads"])
    t0 = time.perf_counter()
    method, seed, device = task["method"], task["seed"], task["device"]
    cfg = method_config(task["config"], method, seed, task.get("difficulty_dice"))
    res = train(cfg, out_dir=Path(task["out_dir"]) / f"{method}-seed{seed}", device=device, plots=False)
    seg = load_model(res.best_path, device=device)
    test = open_split(cfg.data, "test")
    report = evaluate(seg, test, batch_size=task.get("eval_batch", 8))
    names = list(seg.class_names)
    best = next(r for r in res.history if r["epoch"] == res.best_epoch)
    val_dice = [best.get(f"dice_{n}") for n in names]
    probe = [test[i] for i in range(min(task.get("probe_images", 8), len(test)))]
    sens = bias_sensitivity(seg, [p[0] for p in probe], [p[1] for p in probe])
    return {
        "method": method, "seed": seed,
        "dice": [report[n]["dice"] for n in names], "iou": [report[n]["iou"] for n in names],
        "mdice": report["_mean"]["dice"], "miou": report["_mean"]["iou"],
        "bias": seg.class_bias().tolist(), "prior": seg.prior_bias().tolist(),
        "bias_start": seg.model.bias.warm_start_delta().detach().cpu().tolist() if seg.config.learned_bias else None,
        "val_dice": val_dice, "best_epoch": res.best_epoch, "epochs": len(res.history),
        "seconds": round(time.perf_counter() - t0, 1),
        "difficulty_dice": task.get("difficulty_dice") if method == "difficulty" else None,
        "sensitivity": sens,
    }


def _filled(values) -> list[float]:
    """None/NaN (a class absent from validation) → the mean of the others (0.5 if all missing)."""
    d = np.array([np.nan if v is None else v for v in values], dtype=float)
    fill = np.nanmean(d) if np.isfinite(d).any() else 0.5
    return np.where(np.isnan(d), fill, d).tolist()


class _InlinePool:
    """A one-at-a-time stand-in for a process pool: runs each task when it is submitted."""

    def submit(self, fn, arg) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(arg))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            fut.set_exception(exc)
        return fut

    def shutdown(self, **_):
        pass


def run_comparison(*, methods=DEFAULT_METHODS, seeds=range(DEFAULT_SEEDS), config: TrainConfig | None = None,
                   out_dir="runs/bench", device="cpu", jobs: int = 1, probe_images: int = 8,
                   progress=None) -> dict:
    """Train and test every method with every seed; returns the raw results with the paired
    statistics under ``"paired"`` (see :func:`comparison_markdown`).

    Arguments:
      methods: names from :data:`METHODS`; ``none`` (the reference) is always added.
      seeds: the paired seeds.
      config: the shared recipe (default :func:`comparison_config`).
      out_dir: run folders ``<method>-seed<s>`` go here.
      device: ``cpu``, ``cuda``, ``auto``...; ``cuda`` without CUDA raises ConfigError at once.
      jobs: runs trained at the same time, each in its own process (a small model leaves most of a
        GPU idle); 1 = one after the other in this process.
      probe_images: test images of the mechanism probe (:func:`bias_sensitivity`).
      progress: ``progress(done, total, method=, seed=)`` after each run.
    """
    from ..model.device import resolve_device
    from .datasets import class_frequencies, open_split

    dev = resolve_device(device)  # fail before any training when the device is missing
    base = _with_synth_classes(config or comparison_config())
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    order = [m for m in METHODS if m in set(methods) | {REFERENCE}]
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct and at least one, got {seeds}")
    if jobs < 1:
        raise ConfigError(f"jobs = {jobs} must be >= 1")
    test = open_split(base.data, "test")  # also generates the synthetic data, once, before any worker
    train_split = open_split(base.data, "train")
    if len(test) == 0:
        raise DataError(f"{test.csv_path}: no test images (fold -1); the comparison is reported on the test split")
    if len(train_split) == 0:
        raise DataError(f"{train_split.csv_path}: no training images (fold >= 1)")
    if "difficulty" in order and len(open_split(base.data, "val")) == 0:
        raise DataError(f"{test.csv_path}: method difficulty needs a validation split (fold 0) for the none "
                        "run's Dice; add fold-0 images or leave difficulty out of --methods")
    root = test.root
    names = list(test.class_set.names)
    results: dict = {
        "classes": names, "frequencies": class_frequencies(train_split).tolist(), "runs": {},
        "seeds": seeds, "methods": order, "config": base.to_dict(), "device": str(dev), "jobs": jobs,
        "data": describe_data(base, root), "data_root": str(root),
        "difficulty": {n: d for n, (d, _) in class_difficulty(base, root).items()},
        "lookalike": {n: look for n, (_, look) in class_difficulty(base, root).items()},
        "sizes": {"train": len(train_split), "test": len(test)},
    }
    threads = max(1, torch.get_num_threads() // jobs) if jobs > 1 else None
    common = {"config": base, "out_dir": str(out_dir), "device": str(dev), "probe_images": probe_images,
              "threads": threads}
    pending = deque({**common, "method": m, "seed": s} for s in seeds for m in order if m != "difficulty")
    waiting = {s: {**common, "method": "difficulty", "seed": s} for s in seeds if "difficulty" in order}
    total, done = len(order) * len(seeds), 0
    if jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # spawn: a forked child would inherit this process's CUDA context, which CUDA forbids.
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"))
    else:
        pool = _InlinePool()
    running: dict[Future, dict] = {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                task = pending.popleft()
                running[pool.submit(_run_one, task)] = task
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                task = running.pop(fut)
                run = fut.result()
                results["runs"][f"{run['method']}/{run['seed']}"] = run
                if run["method"] == REFERENCE and run["seed"] in waiting:
                    # Validation Dice of the none run → the difficulty prior of the same seed.
                    follow = waiting.pop(run["seed"])
                    follow["difficulty_dice"] = _filled(run["val_dice"])
                    pending.appendleft(follow)
                done += 1
                logger.info("bench %s seed %d: test mDice %.4f (%.0f s)", run["method"], run["seed"], run["mdice"],
                            run["seconds"])
                if progress is not None:
                    progress(done, total, method=task["method"], seed=task["seed"])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    results["paired"] = paired_statistics(results)
    results["verdict"] = verdict(results)
    return results


# -- the mechanism probe -------------------------------------------------------------------------------

def _dice(pred: torch.Tensor, mask: torch.Tensor, c: int) -> tuple[int, int]:
    """(2·|P∩G|, |P| + |G|) of class index c over the labelled pixels (mask > 0)."""
    labelled = mask > 0
    p = (pred == c) & labelled
    g = mask == c + 1
    return 2 * int((p & g).sum()), int(p.sum()) + int(g.sum())


@torch.no_grad()
def bias_sensitivity(segmenter, images, masks=None, *, shift: float = 1.0) -> dict:
    """How much each class's bias moves the prediction, against its output logit.

    For every class c: ``bias_px`` is the share of pixels whose label changes when b_c (the vector
    the decoder adds to the pixel → class attention logits, in every mode; in ``dfa-out`` it is
    also c's output offset) is raised by ``shift``; ``logit_px`` the same for raising class c's
    output logit by ``shift``. With ``masks`` (0 = ignore), ``bias_dice`` / ``logit_dice`` are the
    change of class c's Dice over the labelled pixels of all images (None where c is neither
    predicted nor present). The model is left as it was.
    """
    model = segmenter.model
    k = segmenter.num_classes
    logits = [segmenter.predict_logits(np.asarray(img)[None])["logits"][0] for img in images]
    base = [lg.argmax(0) for lg in logits]
    device = logits[0].device if logits else torch.device("cpu")
    targets = None if masks is None else [torch.as_tensor(np.asarray(m).astype(np.int64), device=device) for m in masks]
    n_px = sum(b.numel() for b in base)

    def changed(preds) -> float:
        return float(sum(int((p != b).sum()) for p, b in zip(preds, base)) / max(n_px, 1))

    def dice(preds, c) -> float:
        num = den = 0
        for p, t in zip(preds, targets):
            a, b = _dice(p, t, c)
            num, den = num + a, den + b
        return num / den if den else float("nan")

    def delta_dice(preds, c):
        if targets is None:
            return None
        d = dice(preds, c) - dice(base, c)
        return None if math.isnan(d) else d

    out = {"shift": shift, "pixels": n_px, "bias_px": [], "bias_dice": [], "logit_px": [], "logit_dice": []}
    for c in range(k):
        onehot = torch.zeros(k, device=device)
        onehot[c] = shift
        preds = [(lg + onehot[:, None, None]).argmax(0) for lg in logits]
        out["logit_px"].append(changed(preds))
        out["logit_dice"].append(delta_dice(preds, c))
        handle = model.bias.register_forward_hook(lambda _m, _i, b, v=onehot: b + v.to(b.device, b.dtype))
        try:
            preds = [segmenter.predict_logits(np.asarray(img)[None])["logits"][0].argmax(0) for img in images]
        finally:
            handle.remove()
        out["bias_px"].append(changed(preds))
        out["bias_dice"].append(delta_dice(preds, c))
    return out


# -- paired statistics ---------------------------------------------------------------------------------

def sign_test(diffs) -> float:
    """Two-sided exact sign test of the paired differences (zeros dropped); 1.0 without data."""
    d = np.asarray([v for v in diffs if v is not None and np.isfinite(v)], dtype=float)
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    n = pos + neg
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(pos, neg) + 1)) / 2.0 ** n
    return float(min(1.0, 2 * tail))


def bootstrap_ci(diffs, *, level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean difference, resampling the seeds (numpy only)."""
    d = np.asarray([v for v in diffs if v is not None and np.isfinite(v)], dtype=float)
    if d.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(samples, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _stat(diffs) -> dict:
    d = [v for v in diffs if v is not None and np.isfinite(v)]
    lo, hi = bootstrap_ci(d)
    p = sign_test(d)
    return {"mean": float(np.mean(d)) if d else None, "ci": [lo, hi] if d else None, "p": p, "n": len(d),
            "wins": int(sum(v > 0 for v in d)), "losses": int(sum(v < 0 for v in d)),
            "significant": bool(d) and p < SIGNIFICANCE and (lo > 0 or hi < 0)}


def paired_statistics(results: dict) -> dict:
    """Per method (not ``none``): per-class and mDice differences to ``none`` of the same seed."""
    runs, names = results["runs"], results["classes"]
    out = {}
    for m in results["methods"]:
        if m == REFERENCE:
            continue
        pairs = [(runs[f"{m}/{s}"], runs[f"{REFERENCE}/{s}"]) for s in results["seeds"]
                 if f"{m}/{s}" in runs and f"{REFERENCE}/{s}" in runs]

        def diff(a, b):
            return None if a is None or b is None else a - b

        out[m] = {
            "classes": [_stat([diff(a["dice"][k], b["dice"][k]) for a, b in pairs]) for k in range(len(names))],
            "mdice": _stat([diff(a["mdice"], b["mdice"]) for a, b in pairs]),
        }
    return out


def verdict(results: dict) -> str:
    """One line: per method, whether it differs from ``none`` beyond seed noise."""
    paired, names = results.get("paired") or paired_statistics(results), results["classes"]
    n = len(results["seeds"])
    rule = (f"{n} paired seeds; a difference counts when its bootstrap 95 % interval excludes 0 and the sign "
            f"test gives p < {SIGNIFICANCE}")
    floor = 2 / 2 ** n
    if floor >= SIGNIFICANCE:
        rule += f" — with {n} seeds the sign test cannot go below p = {floor:.3f}, so nothing can count; use ≥ 6"
    parts = []
    for m, st in paired.items():
        md = st["mdice"]
        if md["mean"] is None:
            parts.append(f"{m}: no paired runs")
            continue
        lo, hi = md["ci"]
        if md["significant"]:
            head = "better than none" if md["mean"] > 0 else "worse than none"
        else:
            head = "within seed noise of none"
        cls = [f"{'+' if s['mean'] > 0 else '−'} {names[k]} ({s['mean']:+.3f})"
               for k, s in enumerate(st["classes"]) if s["significant"]]
        tail = f"; per class: {', '.join(cls)}" if cls else ""
        parts.append(f"{m} {head} (mDice {md['mean']:+.3f} [{lo:+.3f}, {hi:+.3f}], p = {md['p']:.3f}){tail}")
    return f"**Verdict** ({rule}): " + "; ".join(parts) + "."


# -- the report ----------------------------------------------------------------------------------------

def _ms(values) -> str:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    v = v[~np.isnan(v)]
    if not len(v):
        return "—"
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def _mean(values):
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def _signed(v) -> str:
    return "—" if v is None else f"{v:+.3f}"


def comparison_markdown(results: dict) -> str:
    """The Markdown report of :func:`run_comparison` results (verdict, tables)."""
    names, seeds, methods, runs = results["classes"], results["seeds"], results["methods"], results["runs"]
    paired = results.get("paired") or paired_statistics(results)
    label = {m: METHODS[m].label if m in METHODS else m for m in methods}
    by_method = {m: [runs[f"{m}/{s}"] for s in seeds if f"{m}/{s}" in runs] for m in methods}
    out = [f"Data: {results.get('data', '?')}. Classes: {', '.join(names)}. {len(seeds)} paired seeds "
           "(seed s gives every method the same initial weights, data order and augmentation).\n",
           results.get("verdict") or verdict(results), ""]

    def mech(rs, key):
        return _mean([_mean(r["sensitivity"][key]) for r in rs if r.get("sensitivity")])

    out.append(f"Test-set per-class Dice (dataset level), mean ± sd over {len(seeds)} seeds; the last column is "
               "the mechanism probe averaged over classes: pixels whose label changes when b_c is raised by 1 "
               "vs when class c's output logit is raised by 1:\n")
    out.append("| method | " + " | ".join(names) + " | mDice | px changed: b_c + 1 / logit + 1 |")
    out.append("| --- |" + " ---: |" * (len(names) + 2))
    for m in methods:
        rs = by_method[m]
        cells = [_ms([r["dice"][k] for r in rs]) for k in range(len(names))]
        probe = f"{_pct(mech(rs, 'bias_px'))} / {_pct(mech(rs, 'logit_px'))}"
        out.append(f"| {label[m]} | " + " | ".join(cells) + f" | {_ms([r['mdice'] for r in rs])} | {probe} |")
    out.append("")
    if paired:
        out.append("Paired difference to none (method − none, same seed): mean [bootstrap 95 % interval], "
                   "two-sided sign-test p (wins:losses):\n")
        out.append("| method | " + " | ".join(names) + " | mDice |")
        out.append("| --- |" + " ---: |" * (len(names) + 1))
        for m, st in paired.items():
            cells = []
            for s in [*st["classes"], st["mdice"]]:
                if s["mean"] is None:
                    cells.append("—")
                    continue
                star = "**" if s["significant"] else ""
                cells.append(f"{star}{s['mean']:+.3f}{star} [{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}] "
                             f"p={s['p']:.2f} ({s['wins']}:{s['losses']})")
            out.append(f"| {label[m]} | " + " | ".join(cells) + " |")
        out.append("")
    out.append("Mechanism, per class (mean over seeds, on the first test images): pixels changed and change of "
               "that class's Dice when b_c + 1 (the attention bias; in DFA-out also the output) vs when its "
               "output logit + 1:\n")
    out.append("| method | " + " | ".join(names) + " |")
    out.append("| --- |" + " --- |" * len(names))
    for m in methods:
        rs = [r for r in by_method[m] if r.get("sensitivity")]
        cells = []
        for k in range(len(names)):
            def avg(key, k=k):
                return _mean([r["sensitivity"][key][k] for r in rs])

            cells.append(f"b {_pct(avg('bias_px'))} / {_signed(avg('bias_dice'))} · "
                         f"logit {_pct(avg('logit_px'))} / {_signed(avg('logit_dice'))}")
        out.append(f"| {label[m]} | " + " | ".join(cells) + " |")
    out.append("")
    out.append(f"Test-set per-class IoU, mean ± sd over {len(seeds)} seeds:\n")
    out.append("| method | " + " | ".join(names) + " | mIoU |")
    out.append("| --- |" + " ---: |" * (len(names) + 1))
    for m in methods:
        rs = by_method[m]
        cells = [_ms([r["iou"][k] for r in rs]) for k in range(len(names))]
        out.append(f"| {label[m]} | " + " | ".join(cells) + f" | {_ms([r['miou'] for r in rs])} |")
    out.append("")
    learned = [m for m in methods if by_method[m] and by_method[m][0].get("bias_start") is not None]
    out.append("Classes: training-pixel frequency f_c, difficulty where the data states it (synthetic generator: "
               "0 easy … 1 look-alike), the centred prior, and b_c of the learned methods at the start → end "
               "of training (mean over seeds):\n")
    out.append("| class | f_c | difficulty (look-alike) | prior γ·log(1−f_c) − mean | "
               + " | ".join(f"{m} b_c start → end" for m in learned)
               + (" | difficulty-mode b_c (centred) |" if "difficulty" in methods else " |"))
    out.append("| --- | ---: | --- | ---: |" + " ---: |" * (len(learned) + ("difficulty" in methods)))
    any_run = next(iter(runs.values()), None)
    for k, n in enumerate(names):
        d = results.get("difficulty", {}).get(n)
        look = results.get("lookalike", {}).get(n)
        dtxt = "—" if d is None else f"{d:.2f}" + (f" ({look})" if look else "")
        prior = any_run["prior"][k] if any_run else float("nan")
        row = f"| {n} | {results['frequencies'][k]:.3f} | {dtxt} | {prior:+.3f} |"
        for m in learned:
            rs = by_method[m]
            row += f" {np.mean([r['bias_start'][k] for r in rs]):+.3f} → {np.mean([r['bias'][k] for r in rs]):+.3f} |"
        if "difficulty" in methods:
            row += f" {_ms([r['bias'][k] - np.mean(r['bias']) for r in by_method['difficulty']])} |"
        out.append(row)
    secs = [r["seconds"] for r in runs.values()]
    out.append(f"\n{len(runs)} training runs, {np.mean(secs):.0f} s each on average "
               f"({results.get('jobs', 1)} at a time, device {results.get('device', '?')}).")
    return "\n".join(out)
