"""The training loop: a recipe (:class:`TrainConfig`) end to end, on one process or under torchrun.

Run folder (rank 0 writes it)::

    best.safetensors        model with the best validation mDice (Segmenter checkpoint)
    last.safetensors        model after the last finished epoch
    last_state.safetensors  optimizer, LR schedule, RNG state, epoch, history (for --resume)
    history.csv / .json     per epoch: losses, per-class Dice/IoU, b_c (and the prior, f_c)
    loss.png dice.png bias.png
    recipe.json             the resolved recipe

Determinism: model init from ``seed``; data order from the (distributed) sampler seeded with
``seed + epoch``; augmentation from ``(seed, epoch, index)``; the torch RNG state is saved with every
``last`` checkpoint. Resuming a run therefore ends with the same weights as an uninterrupted run of
the same recipe and seed (same total number of epochs, since the LR schedule depends on it).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ..errors import Cancelled, ConfigError, DataError
from . import ddp
from .config import TrainConfig
from .datasets import (EpochSampler, EvalTiles, MultiCropBatchSampler, TrainTiles, class_frequencies, class_set_for,
                       open_split, pad_collate)
from .evaluation import validate
from .losses import SegmentationLoss
from .metrics import SegmentationMeter
from .optim import make_optimizer
from .state import load_train_state, save_train_state

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished (or early-stopped) run produced.

    Arguments:
      out_dir: the run folder.
      best_path / last_path: checkpoints (``load_model`` them).
      history: per-epoch log rows (also in history.json).
      best_epoch / best_mdice: epoch (1-based) and validation mDice of ``best`` (NaN without a
        validation split; then ``best`` is the epoch with the lowest training loss).
      stopped_early: True when early stopping ended the run.
      frequencies: f_c of the training split.
      class_names: the K classes.
    """

    out_dir: Path
    best_path: Path
    last_path: Path
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_mdice: float = float("nan")
    stopped_early: bool = False
    frequencies: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)


def lr_lambda(config: TrainConfig, steps_per_epoch: int):
    """LR factor per optimizer step: linear warm-up, then the recipe's schedule."""
    total = max(1, config.epochs * steps_per_epoch)
    warm = config.warmup_steps

    def factor(step: int) -> float:
        f = min(1.0, (step + 1) / warm) if warm else 1.0
        if config.schedule == "cosine":
            f *= 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        elif config.schedule == "poly":
            f *= max(0.0, 1 - step / total) ** 0.9
        elif config.schedule == "step":
            epoch = step // max(1, steps_per_epoch)
            f *= 0.1 ** sum(1 for e in config.step_epochs if epoch >= e)
        return f

    return factor


def build_model_for(config: TrainConfig, num_classes: int, frequencies, class_names=None):
    """The model of a recipe (``[model]`` table) for ``num_classes`` classes, warm-started from f_c;
    with ``init``, the weights and architecture of that checkpoint (f_c re-measured, δ kept)."""
    from ..model import ModelConfig, build_model, load_model

    if config.init:
        seg = load_model(config.init)
        if seg.num_classes != num_classes:
            raise ConfigError(f"{config.init}: the checkpoint has {seg.num_classes} classes, the data {num_classes}; "
                              "initialise from a model with the same class list")
        if class_names is not None and list(class_names) != list(seg.class_names):
            logger.warning("init = %s: its classes %s differ from the data's %s (same ids are assumed)",
                        config.init, seg.class_names, list(class_names))
        if config.model:
            logger.warning("init = %s: the [model] table is ignored (the checkpoint's architecture is used)", config.init)
        seg.model.bias.set_frequencies(frequencies, warm_start=False)
        torch.manual_seed(config.seed)
        return seg.model.float()

    raw = {"preset": "tiny", **config.model, "num_classes": num_classes}
    if raw.get("encoder_weights") == "":
        raw["encoder_weights"] = None  # TOML has no null: "" means "no pretrained weights"
    mcfg = ModelConfig.from_dict(raw, source=f"{config.source or 'recipe'} [model]")
    torch.manual_seed(config.seed)  # identical initial weights in every run and every DDP rank
    return build_model(mcfg, frequencies=frequencies)


def _write_logs(out_dir: Path, history: list[dict], meta: dict) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with open(out_dir / "history.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    (out_dir / "history.json").write_text(json.dumps({**meta, "epochs": history}, indent=1), encoding="utf-8")


def _num(v) -> float | None:
    v = float(v)
    return None if math.isnan(v) else round(v, 6)


class _Run:
    """State of one training run (one process)."""

    def __init__(self, config, ctx, *, data_root, out_dir, resume, progress, cancel, plots):
        self.config, self.ctx = config, ctx
        self.progress, self.cancel, self.plots = progress, cancel, plots
        self.out_dir = Path(out_dir) if out_dir else Path("runs") / config.name
        self.resume = resume
        self.class_set = class_set_for(config.data)
        self.train_base = open_split(config.data, "train", root=data_root)
        self.val_base = open_split(config.data, "val", root=data_root)
        if len(self.train_base) == 0:
            raise DataError(f"{self.train_base.csv_path}: no training images (fold >= 1)")
        self.data_root = str(self.train_base.root)
        self.frequencies = class_frequencies(self.train_base)
        self.K = self.class_set.num_classes
        self.model = build_model_for(config, self.K, self.frequencies, self.class_set.names).to(ctx.device)
        from ..model import Segmenter

        # The facade that writes checkpoints (class names/colours, f_c, mpp, provenance, b_c history).
        self.segmenter = Segmenter(self.model, class_names=self.class_set.names, class_colors=self.class_set.colors,
                                   mpp=config.data.mpp, device=ctx.device)
        self.net = self.model
        if ctx.distributed:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            )
        self.criterion = SegmentationLoss(
            kind=config.loss, focal_weight=config.focal_weight, dice_weight=config.dice_weight,
            focal_gamma=config.focal_gamma, frequencies=self.frequencies,
            logit_adjust_tau=config.logit_adjust_tau,
        ).to(ctx.device)
        self._loaders()
        self.optimizer = make_optimizer(self.model, lr=config.lr, weight_decay=config.weight_decay,
                                        delta_lr_multiplier=self.model.config.delta_lr_multiplier)
        self.steps_per_epoch = math.ceil(len(self.train_loader) / config.accumulate)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config, self.steps_per_epoch))
        # Autocast only on CUDA; CPU trains in float32. (cudnn.benchmark stays off: measured on an
        # H200 with the small preset it cost ~11 s of autotuning per process and sped no epoch up.)
        self.amp = config.amp and ctx.device.type == "cuda"
        # bf16 needs no loss scaling; fp16 (older GPUs) does.
        self.amp_dtype = torch.bfloat16 if (self.amp and torch.cuda.is_bf16_supported()) else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)
        self.history: list[dict] = []
        self.best_score, self.best_epoch, self.bad_epochs = float("-inf"), 0, 0
        self.start_epoch = 0

    def _loaders(self):
        c = self.config
        self.train_tiles = TrainTiles(self.train_base, crop=c.data.crop, augment_config=c.augment, seed=c.seed)
        pin = self.ctx.device.type == "cuda"
        if c.data.crops:  # several crop sizes, one per batch (see DataConfig.crops)
            sides = self.train_base.shorter_sides()
            self.sampler = MultiCropBatchSampler(
                sides, crops=c.data.crops, batch_sizes=c.data.crop_batch_sizes or [c.batch_size] * len(c.data.crops),
                seed=c.seed, rank=self.ctx.rank, world_size=self.ctx.world_size,
            )
            self.train_loader = DataLoader(
                self.train_tiles, batch_sampler=self.sampler, num_workers=c.num_workers,
                pin_memory=pin, persistent_workers=c.num_workers > 0,
            )
        else:
            self.sampler = EpochSampler(DistributedSampler(
                self.train_tiles, num_replicas=self.ctx.world_size, rank=self.ctx.rank, shuffle=True, seed=c.seed,
            ))
            self.train_loader = DataLoader(
                self.train_tiles, batch_size=c.batch_size, sampler=self.sampler, num_workers=c.num_workers,
                pin_memory=pin, persistent_workers=c.num_workers > 0, drop_last=False,
            )
        # Validation: each rank takes every world-th image; counts are merged afterwards.
        val_idx = list(range(self.ctx.rank, len(self.val_base), self.ctx.world_size))
        self.val_loader = DataLoader(
            torch.utils.data.Subset(EvalTiles(self.val_base, crop=c.data.val_crop), val_idx),
            batch_size=c.batch_size, shuffle=False, num_workers=0, collate_fn=pad_collate, pin_memory=pin,
        )

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def paths(self):
        return self.out_dir / "best.safetensors", self.out_dir / "last.safetensors", self.out_dir / "last_state.safetensors"

    def _bias_history(self):
        return [{"epoch": r["epoch"], "phase": "train", "bias": [r[f"b_{n}"] for n in self.class_set.names]}
                for r in self.history]

    def _save(self, path, epoch):
        self.segmenter.metadata["bias_history"] = self._bias_history()
        self.segmenter.metadata["train"] = {"recipe": self.config.to_dict(), "history_tail": self.history[-1:]}
        self.segmenter.save(path, provenance=self._provenance(epoch))

    def _provenance(self, epoch):
        return {
            "parent": self.config.init or None,
            "data": self.data_root,
            "recipe": self.config.name,
            "recipe_file": self.config.source,
            "epoch": epoch,
            "seed": self.config.seed,
            "val_mdice": self.history[-1].get("val_mdice") if self.history else None,
            "world_size": self.ctx.world_size,
        }

    def _extra(self):
        return {
            "history": self.history, "best_score": self.best_score, "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs, "recipe": self.config.to_dict(),
        }

    def _stamp_domain(self, *paths):
        """Store what the training images looked like (colour, stain, the model's features) in the
        checkpoints, so that predict and Segment can warn on a slide far outside it."""
        from ..model.domain import stamp_checkpoints

        n, m = len(self.train_base), min(len(self.train_base), 64)
        trained_on = ("synthetic tissue only" if self.config.data.kind == "synthetic"
                      else f"{self.class_set.name} data ({self.data_root})")
        images = (self.train_base[i][0] for i in sorted({round(j * (n - 1) / max(1, m - 1)) for j in range(m)}))
        try:
            stamp_checkpoints(paths, images, trained_on=trained_on)
        except DataError as exc:  # too little tissue: the model works, it only cannot warn
            logger.warning("no domain statistics stored in %s: %s", self.out_dir, exc)

    def try_resume(self):
        best, last, state = self.paths
        if not (last.is_file() and state.is_file()):
            raise ConfigError(f"{self.out_dir}: nothing to resume (no last.safetensors + last_state.safetensors); "
                              "run without --resume")
        from ..model.checkpoint import read_checkpoint

        ck = read_checkpoint(last)
        if ck.config.to_dict() != self.model.config.to_dict():
            raise ConfigError(f"{last}: its model config differs from the recipe's; resume with the same recipe")
        self.model.load_state_dict(ck.state_dict)
        # The state's own weights (when it has them) replace last's: the two files are written one
        # after the other, and only the state and its weights are one unit.
        epoch, extra = load_train_state(state, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
                                        model=self.model)
        weights_epoch = ck.provenance.get("epoch")
        if weights_epoch is not None and int(weights_epoch) != epoch:
            if not extra["weights_in_state"]:
                raise ConfigError(
                    f"{self.out_dir}: cannot resume exactly: {last.name} holds epoch {weights_epoch} but "
                    f"{state.name} epoch {epoch} (the run was stopped between writing the two, by a version "
                    f"that kept the weights apart from the state); start over with --overwrite, or begin a new "
                    f"run from these weights with --init {last}")
            logger.warning("%s: %s is from epoch %s, its training state from epoch %d (the run was stopped "
                           "between the two); resuming after epoch %d with the weights saved in the state",
                           self.out_dir, last.name, weights_epoch, epoch, epoch)
        if extra["recipe"]["seed"] != self.config.seed:
            raise ConfigError(f"{state}: the run used seed {extra['recipe']['seed']}, not {self.config.seed}")
        self.history = extra["history"]
        self.best_score, self.best_epoch, self.bad_epochs = extra["best_score"], extra["best_epoch"], extra["bad_epochs"]
        self.start_epoch = epoch
        logger.info("resuming %s after epoch %d", self.out_dir, epoch)

    # -- one epoch ------------------------------------------------------------------------------
    def train_epoch(self, epoch: int, step0: int, total_steps: int) -> float:
        from ..model.bias import bias_l2_penalty

        c = self.config
        self.sampler.set_epoch(epoch)
        self.train_tiles.set_epoch(epoch)
        self.net.train()
        cuda = self.ctx.device.type == "cuda"
        # The loss is summed on the device: a float() per step would wait for the GPU every step.
        loss_sum, n = torch.zeros((), device=self.ctx.device), 0  # float32: MPS has no float64
        self.optimizer.zero_grad(set_to_none=True)
        batches = len(self.train_loader)
        for i, (imgs, masks) in enumerate(self.train_loader):
            if self.cancel is not None and self.cancel():
                raise Cancelled(f"training cancelled in epoch {epoch + 1}; {self.paths[1]} holds the last finished epoch")
            masks = masks.to(self.ctx.device, non_blocking=True)
            x = imgs.to(self.ctx.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)  # the model is channels-last on CUDA
            with torch.autocast(device_type=self.ctx.device.type, dtype=self.amp_dtype, enabled=self.amp):
                logits = self.net(x)["logits"]
            loss = self.criterion(logits.float(), masks)
            if self.model.config.bias_l2_lambda:
                loss = loss + bias_l2_penalty(self.model, self.model.config.bias_l2_lambda)
            self.scaler.scale(loss / c.accumulate).backward()
            if (i + 1) % c.accumulate == 0 or i + 1 == batches:
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
            loss_sum += loss.detach()
            n += 1
            if self.progress is not None:
                self.progress(step0 + i + 1, total_steps, epoch=epoch + 1, loss=float(loss.detach()))
        totals = ddp.all_reduce_sum(self.ctx, torch.tensor([float(loss_sum), n], dtype=torch.float64))
        return float(totals[0] / max(1.0, float(totals[1])))

    def validate(self):
        loss_sum, meter, batches = validate(self.model, self.val_loader, num_classes=self.K, device=self.ctx.device,
                                            criterion=self.criterion, amp=self.amp)
        totals = ddp.all_reduce_sum(self.ctx, torch.tensor([loss_sum, batches], dtype=torch.float64))
        meters = ddp.gather_objects(self.ctx, meter)
        merged = SegmentationMeter(num_classes=self.K)
        for m in meters:
            merged.merge(m)
        val_loss = float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")
        return val_loss, merged.compute()

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        c, ctx = self.config, self.ctx
        best_p, last_p, state_p = self.paths
        if ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.resume:
            self.try_resume()
        elif ctx.is_main and last_p.exists():
            logger.warning("%s already holds a run; it is overwritten (use --resume to continue it)", self.out_dir)
        if ctx.is_main:
            (self.out_dir / "recipe.json").write_text(json.dumps(c.to_dict(), indent=1), encoding="utf-8")
        names = list(self.class_set.names)
        prior = self.model.bias.centred_prior().detach().cpu().numpy()
        meta = {"class_names": names, "class_colors": [list(x) for x in self.class_set.colors],
                "frequencies": self.frequencies.tolist(), "prior_bias": prior.tolist(),
                "bias_mode": self.model.config.bias_mode, "seed": c.seed, "recipe": c.name}
        total_steps = c.epochs * len(self.train_loader)
        stopped_early = False
        for epoch in range(self.start_epoch, c.epochs):
            t0 = time.perf_counter()
            train_loss = self.train_epoch(epoch, epoch * len(self.train_loader), total_steps)
            val_loss, s = self.validate() if len(self.val_base) else (float("nan"), None)
            bias = self.model.bias().detach().cpu().numpy()
            row = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": _num(train_loss),
                   "val_loss": _num(val_loss)}
            if s is not None:
                row.update(val_mdice=_num(s["mdice"]), val_miou=_num(s["miou"]),
                           val_image_mdice=_num(s["image_mdice"]), val_image_miou=_num(s["image_miou"]))
                for k, name in enumerate(names):
                    row[f"dice_{name}"] = _num(s["dice"][k])
                for k, name in enumerate(names):
                    row[f"iou_{name}"] = _num(s["iou"][k])
            for k, name in enumerate(names):
                row[f"b_{name}"] = round(float(bias[k]), 6)
            row["time_s"] = round(time.perf_counter() - t0, 3)
            self.history.append(row)
            # Selection: validation mDice; without a validation split, the lowest training loss.
            score = row.get("val_mdice")
            score = score if score is not None else -train_loss
            improved = score > self.best_score
            if improved:
                self.best_score, self.best_epoch, self.bad_epochs = score, epoch + 1, 0
            else:
                self.bad_epochs += 1
            if ctx.is_main:
                self._save(last_p, epoch + 1)
                if improved:
                    self._save(best_p, epoch + 1)
                save_train_state(state_p, optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
                                 epoch=epoch + 1, extra=self._extra(), model=self.model)
                _write_logs(self.out_dir, self.history, meta)
                if self.plots:
                    from .plots import plot_history

                    plot_history(self.history, class_names=names, class_colors=self.class_set.colors,
                                 prior_bias=prior, out_dir=self.out_dir)
                logger.info("epoch %d/%d: train %.4f val %.4f mDice %s", epoch + 1, c.epochs, train_loss, val_loss,
                         row.get("val_mdice"))
            if c.early_stop_patience and self.bad_epochs >= c.early_stop_patience:
                stopped_early = True
                logger.info("early stop after epoch %d (best %d)", epoch + 1, self.best_epoch)
                break
        if ctx.is_main:
            self._stamp_domain(best_p, last_p)
        ddp.barrier(ctx)
        best_row = next((r for r in self.history if r["epoch"] == self.best_epoch), {})
        best_mdice = best_row.get("val_mdice")
        return TrainResult(out_dir=self.out_dir, best_path=best_p, last_path=last_p, history=self.history,
                           best_epoch=self.best_epoch, best_mdice=float("nan") if best_mdice is None else best_mdice,
                           stopped_early=stopped_early,
                           frequencies=self.frequencies, class_names=names)


def train(config: TrainConfig, *, data_root=None, out_dir=None, resume: bool = False, device="auto",
          progress=None, cancel=None, plots: bool = True) -> TrainResult:
    """Train a recipe; see the module docstring for what the run folder holds.

    Arguments:
      config: the recipe.
      data_root: dataset folder overriding ``[data] root`` (the CLI's ``--data``).
      out_dir: run folder (default ``runs/<name>``).
      resume: continue from ``last`` in ``out_dir``.
      device: ``auto``, ``cpu``, ``cuda`` or ``mps`` (under torchrun: one GPU per local rank).
      progress: ``progress(step, total, epoch=, loss=)`` after every batch.
      cancel: ``cancel() -> bool`` checked before every batch; raises :class:`Cancelled`.
      plots: write the PNG plots after every epoch.
    """
    from ..model.device import resolve_device

    ctx = ddp.setup(resolve_device(device))
    try:
        return _Run(config, ctx, data_root=data_root, out_dir=out_dir, resume=resume, progress=progress,
                    cancel=cancel, plots=plots).run()
    finally:
        ddp.cleanup(ctx)
