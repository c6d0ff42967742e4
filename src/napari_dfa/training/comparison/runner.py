"""Running the comparison (no Qt): every (method, seed) trained, tested and probed, in this process or
in worker processes, the difficulty runs after the none run of their seed."""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path

import numpy as np
import torch

from ...errors import ConfigError, DataError
from ..config import TrainConfig
from .methods import (DEFAULT_METHODS, DEFAULT_SEEDS, METHODS, REFERENCE, class_difficulty, comparison_config,
                      describe_data, method_config, with_synth_classes)
from .probe import bias_sensitivity
from .stats import paired_statistics, verdict

logger = logging.getLogger(__name__)


def _run_one(task: dict) -> dict:
    """Train, test and probe one (method, seed); runs in this process or in a worker process."""
    from ...model import load_model
    from ..datasets import open_split
    from ..evaluation import evaluate
    from ..trainer import train

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
    from ...model.device import resolve_device
    from ..datasets import class_frequencies, open_split

    dev = resolve_device(device)  # fail before any training when the device is missing
    base = with_synth_classes(config or comparison_config())
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
