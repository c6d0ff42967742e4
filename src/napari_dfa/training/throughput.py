"""Training throughput: tiles/s of the full pipeline against the model step alone.

:func:`throughput` measures the full pipeline (dataset, augmentation, collation, transfer, forward,
backward, step) against forward+backward+step on one pre-loaded batch; the ratio says whether the
data pipeline keeps the model fed. The step is the trainer's: same optimizer, bf16 autocast on CUDA
only, channels-last inputs on CUDA, pinned host memory and non-blocking copies.
"""

from __future__ import annotations

import logging
import os
import platform
import time

import torch

from .config import TrainConfig

logger = logging.getLogger(__name__)


def machine_info() -> str:
    """One line: CPU, cores, torch, GPU."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}, Python {platform.python_version()}")


def throughput(*, config: TrainConfig | None = None, steps: int = 30, warmup: int = 3, device="cpu",
               num_workers: int = 0) -> dict:
    """Tiles/s of the full training pipeline vs fwd+bwd+step on one pre-loaded batch (same model,
    batch size and crop). Returns ``dict(pipeline, preloaded, ratio, ...)``."""
    from torch.utils.data import DataLoader, RandomSampler

    from ..model.device import resolve_device
    from .comparison import comparison_config
    from .datasets import TrainTiles, class_frequencies, open_split
    from .losses import SegmentationLoss
    from .optim import make_optimizer
    from .trainer import build_model_for

    cfg = config or comparison_config()
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    base = open_split(cfg.data, "train")
    for i in range(len(base)):
        base[i]  # decode once: a long run reads from the in-memory cache
    freqs = class_frequencies(base)
    model = build_model_for(cfg, base.num_classes, freqs).to(dev)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay,
                         delta_lr_multiplier=model.config.delta_lr_multiplier)
    crit = SegmentationLoss(frequencies=freqs)
    tiles = TrainTiles(base, crop=cfg.data.crop, augment_config=cfg.augment, seed=cfg.seed)
    n_batches = steps + warmup
    sampler = RandomSampler(tiles, replacement=True, num_samples=n_batches * cfg.batch_size,
                            generator=torch.Generator().manual_seed(0))
    loader = DataLoader(tiles, batch_size=cfg.batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=cuda, persistent_workers=False)

    def step(imgs, masks):
        x = imgs.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        y = masks.to(dev, non_blocking=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda and cfg.amp):
            logits = model(x)["logits"]
        loss = crit(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync():
        if cuda:
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
