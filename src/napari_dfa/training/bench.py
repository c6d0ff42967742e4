"""The paper's comparison on synthetic data, and training throughput.

:func:`run_bench` trains every bias mode on the same synthetic tiles with several seeds:

- ``none``        plain class-token decoder (b = 0)
- ``cffa``        fixed frequency prior γ·log(1 − f_c)
- ``difficulty``  fixed γ·log(1 − Dice_c), Dice_c from the ``none`` run's validation of the same seed
- ``dfa``         learned δ_c, warm-started from the prior (the paper's method)
- ``weighted_ce`` mode ``none`` trained with inverse-frequency class-weighted cross-entropy

and reports test-set per-class Dice and IoU (dataset level) as mean ± std over seeds, next to each
class's frequency and configured difficulty, plus the learned b_c against the prior.

:func:`throughput` measures tiles/s of the full pipeline (dataset, augmentation, collation,
transfer, forward, backward, step) against forward+backward+step on one pre-loaded batch.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig

logger = logging.getLogger(__name__)

METHODS = ("none", "cffa", "difficulty", "dfa", "weighted_ce")
LABELS = {
    "none": "none (b = 0)",
    "cffa": "CFFA prior γ·log(1−f)",
    "difficulty": "difficulty γ·log(1−Dice)",
    "dfa": "**DFA** (learned δ)",
    "weighted_ce": "class-weighted CE",
}


def bench_config(*, epochs: int = 15, preset: str = "tiny", tile: int = 128, n_train: int = 64, n_val: int = 16,
                 n_test: int = 32, batch_size: int = 8, lr: float = 3e-3, data_seed: int = 0) -> TrainConfig:
    """The recipe every method of the benchmark shares (CPU-sized)."""
    return TrainConfig(
        name="bench", epochs=epochs, batch_size=batch_size, lr=lr, schedule="cosine", warmup_steps=10,
        model={"preset": preset, "gamma": 2.0, "delta_init_scale": 0.5, "delta_lr_multiplier": 20.0},
    ).replace(data={"kind": "synthetic", "classes": "synthetic", "crop": tile, "synth_tile": tile,
                    "synth_n_train": n_train, "synth_n_val": n_val, "synth_n_test": n_test, "synth_seed": data_seed})


def _method_config(base: TrainConfig, method: str, seed: int, difficulty_dice=None) -> TrainConfig:
    if method == "weighted_ce":
        return base.replace(seed=seed, loss="weighted_ce", model={"bias_mode": "none"})
    model = {"bias_mode": method}
    if method == "difficulty":
        model["difficulty_dice"] = list(difficulty_dice)
    return base.replace(seed=seed, model=model)


def run_bench(*, methods=METHODS, seeds=(0, 1, 2), config: TrainConfig | None = None, out_dir="runs/bench",
              device="cpu", progress=None) -> dict:
    """Train and test every method with every seed; returns the raw results (see :func:`bench_markdown`).

    ``progress(done, total, method=, seed=)`` after each training run.
    """
    from ..model import load_model
    from .datasets import class_frequencies, open_split
    from .evaluation import evaluate
    from .trainer import train

    base = config or bench_config()
    methods = list(methods)
    if "difficulty" in methods and "none" not in methods:
        methods.insert(0, "none")  # the difficulty prior comes from the none run
    order = [m for m in METHODS if m in methods] + [m for m in methods if m not in METHODS]
    test = open_split(base.data, "test")
    train_split = open_split(base.data, "train")
    names = list(test.class_set.names)
    results: dict = {"classes": names, "frequencies": class_frequencies(train_split).tolist(), "runs": {},
                     "seeds": list(seeds), "methods": order, "config": base.to_dict()}
    total, done = len(order) * len(seeds), 0
    for seed in seeds:
        none_dice = None
        for method in order:
            t0 = time.perf_counter()
            cfg = _method_config(base, method, seed, none_dice)
            res = train(cfg, out_dir=Path(out_dir) / f"{method}-seed{seed}", device=device, plots=False)
            seg = load_model(res.best_path)
            report = evaluate(seg, test, batch_size=8)
            best = next(r for r in res.history if r["epoch"] == res.best_epoch)
            if method == "none":
                # Validation Dice of the none run → the difficulty prior (absent classes: the mean).
                d = np.array([np.nan if best.get(f"dice_{n}") is None else best[f"dice_{n}"] for n in names])
                none_dice = np.where(np.isnan(d), np.nanmean(d), d).tolist()
            results["runs"][f"{method}/{seed}"] = {
                "method": method, "seed": seed,
                "dice": [report[n]["dice"] for n in names], "iou": [report[n]["iou"] for n in names],
                "mdice": report["_mean"]["dice"], "miou": report["_mean"]["iou"],
                "bias": seg.class_bias().tolist(), "prior": seg.prior_bias().tolist(),
                "best_epoch": res.best_epoch, "seconds": round(time.perf_counter() - t0, 1),
                "difficulty_dice": none_dice if method == "difficulty" else None,
                "sensitivity": (bias_sensitivity(seg, [test[i][0] for i in range(min(8, len(test)))])
                                if seg.config.learned_bias else None),
            }
            done += 1
            logger.info("bench %s seed %d: test mDice %.4f", method, seed, report["_mean"]["dice"])
            if progress is not None:
                progress(done, total, method=method, seed=seed)
    try:
        from .. import synth

        cfg = synth.SynthConfig.from_dict(dict(base.data.synth)) if base.data.synth else synth.SynthConfig()
        results["difficulty"] = {c.name: c.difficulty for c in cfg.classes}
        results["lookalike"] = {c.name: c.lookalike for c in cfg.classes}
    except Exception:  # noqa: BLE001 - the table works without the configured difficulty
        results["difficulty"] = {}
    return results


@torch.no_grad()
def bias_sensitivity(segmenter, images, *, shift: float = 1.0) -> list[float]:
    """Share of pixels whose predicted label changes when one class's learned δ_c is raised by
    ``shift`` (one value per class): how much leverage the attention bias has on the prediction.
    Only meaningful for the learned modes (``dfa``, ``dfa-anchored``); the model is restored."""
    delta = segmenter.model.bias.delta
    base = [segmenter.predict(img) for img in images]
    out = []
    for k in range(delta.numel()):
        delta[k] += shift
        try:
            changed = [float((segmenter.predict(img) != b).mean()) for img, b in zip(images, base)]
        finally:
            delta[k] -= shift
        out.append(float(np.mean(changed)))
    return out


def _ms(values) -> str:
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    v = v[~np.isnan(v)]
    if not len(v):
        return "—"
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def bench_markdown(results: dict) -> str:
    """The paper-shaped tables of :func:`run_bench` results."""
    names, seeds, methods = results["classes"], results["seeds"], results["methods"]
    runs = results["runs"]
    out = []
    for metric, title in (("dice", "Dice"), ("iou", "IoU")):
        out.append(f"Test-set per-class {title} (dataset level), mean ± std over {len(seeds)} seeds:\n")
        out.append("| method | " + " | ".join(names) + f" | m{title} |")
        out.append("| --- |" + " ---: |" * (len(names) + 1))
        for m in methods:
            rs = [runs[f"{m}/{s}"] for s in seeds if f"{m}/{s}" in runs]
            cells = [_ms([r[metric][k] for r in rs]) for k in range(len(names))]
            out.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + f" | {_ms([r['m' + metric] for r in rs])} |")
        out.append("")
    out.append("Classes: training-pixel frequency f_c, configured difficulty (synthetic generator: "
               "0 easy … 1 look-alike), and the attention bias b_c:\n")
    out.append("| class | f_c | difficulty (look-alike) | prior γ·log(1−f_c) − mean | DFA learned b_c | "
               "difficulty-mode b_c (centred) | DFA: pixels changed by b_c + 1 |")
    out.append("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    dfa = [runs[f"dfa/{s}"] for s in seeds if f"dfa/{s}" in runs]
    dif = [runs[f"difficulty/{s}"] for s in seeds if f"difficulty/{s}" in runs]
    for k, n in enumerate(names):
        d = results.get("difficulty", {}).get(n)
        look = results.get("lookalike", {}).get(n)
        dtxt = "—" if d is None else f"{d:.2f}" + (f" ({look})" if look else "")
        prior = dfa[0]["prior"][k] if dfa else float("nan")
        learned = _ms([r["bias"][k] for r in dfa])
        dcent = _ms([r["bias"][k] - np.mean(r["bias"]) for r in dif])
        sens = [r["sensitivity"][k] * 100 for r in dfa if r.get("sensitivity")]
        stxt = f"{np.mean(sens):.2f} %" if sens else "—"
        out.append(f"| {n} | {results['frequencies'][k]:.3f} | {dtxt} | {prior:+.3f} | {learned} | {dcent} | {stxt} |")
    secs = [r["seconds"] for r in runs.values()]
    out.append(f"\n{len(runs)} training runs, {np.mean(secs):.0f} s each on average.")
    return "\n".join(out)


def machine_info() -> str:
    """One line: CPU, cores, torch, GPU."""
    import os

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}, Python {platform.python_version()}")


def throughput(*, config: TrainConfig | None = None, steps: int = 30, warmup: int = 3, device="cpu",
               num_workers: int = 0) -> dict:
    """Tiles/s of the full training pipeline vs fwd+bwd+step on one pre-loaded batch (same model,
    batch size and crop). Returns ``dict(pipeline, preloaded, ratio, ...)``."""
    from torch.utils.data import DataLoader, RandomSampler

    from ..model.bias import param_groups
    from ..model.device import resolve_device
    from .datasets import TrainTiles, class_frequencies, open_split
    from .losses import SegmentationLoss
    from .trainer import build_model_for

    cfg = config or bench_config()
    dev = resolve_device(device)
    base = open_split(cfg.data, "train")
    for i in range(len(base)):
        base[i]  # decode once: a long run reads from the in-memory cache
    freqs = class_frequencies(base)
    model = build_model_for(cfg, base.num_classes, freqs).to(dev)
    opt = torch.optim.AdamW(param_groups(model, cfg.lr, cfg.weight_decay, model.config.delta_lr_multiplier))
    crit = SegmentationLoss(frequencies=freqs)
    tiles = TrainTiles(base, crop=cfg.data.crop, augment_config=cfg.augment, seed=cfg.seed)
    n_batches = steps + warmup
    sampler = RandomSampler(tiles, replacement=True, num_samples=n_batches * cfg.batch_size,
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(tiles, batch_size=cfg.batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=dev.type == "cuda", persistent_workers=False)

    def step(imgs, masks):
        x = imgs.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        y = masks.to(dev, non_blocking=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = model(x)["logits"]
        loss = crit(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    it = iter(loader)
    for _ in range(warmup):
        step(*next(it))
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(*next(it))
    sync()
    pipeline_s = time.perf_counter() - t0
    imgs, masks = next(iter(DataLoader(tiles, batch_size=cfg.batch_size)))
    imgs, masks = imgs.to(dev), masks.to(dev)
    for _ in range(warmup):
        step(imgs, masks)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(imgs, masks)
    sync()
    pre_s = time.perf_counter() - t0
    tiles_n = steps * cfg.batch_size
    return {"pipeline": tiles_n / pipeline_s, "preloaded": tiles_n / pre_s, "ratio": pre_s / pipeline_s,
            "batch_size": cfg.batch_size, "crop": cfg.data.crop, "preset": model.config.preset,
            "device": str(dev), "num_workers": num_workers, "steps": steps}
