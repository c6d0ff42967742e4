"""Fine-tuning on a pathologist's corrections, with a guard rail against making the model worse.

Only corrected pixels train (everything else is the ignore label 0). A held-out share of the
corrections — whole 32×32 blocks, so neighbouring pixels of one brush stroke do not sit on both
sides — scores the old and the new model; ``promoted`` says whether the new one did not regress
(cellpose #947/#1377 show fine-tuning silently making models worse). Earlier corrections can be
replayed against forgetting. The input Segmenter is never modified: the result is a deep copy with
provenance (parent, number of corrected pixels) and its b_c history extended.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import Cancelled, DataError
from .augment import augment, rng_for
from .config import AugmentConfig
from .losses import SegmentationLoss
from .metrics import confusion_matrix, scores_from_confusion
from .optim import make_optimizer

logger = logging.getLogger(__name__)

BLOCK = 32  # hold-out granularity in pixels


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune`.

    Arguments:
      segmenter: the fine-tuned copy (the input Segmenter is untouched).
      promoted: True when the new model scores at least as well as the old one on the held-out
        corrections (or when nothing was held out).
      old_score / new_score: mean Dice over the classes of the held-out corrected pixels (NaN when
        nothing was held out).
      history: ``{"step", "loss", "val_loss", "val_score"}`` at every evaluation point.
      corrected_pixels: corrected pixels used (train + held out).
      held_out_pixels: corrected pixels held out for scoring.
    """

    segmenter: object
    promoted: bool
    old_score: float
    new_score: float
    history: list[dict] = field(default_factory=list)
    corrected_pixels: int = 0
    held_out_pixels: int = 0


def _check_samples(samples, num_classes: int, what: str):
    out = []
    for i, s in enumerate(samples or []):
        try:
            rgb, mask = s
        except (TypeError, ValueError):
            raise DataError(f"{what} {i}: expected a pair (rgb H×W×3 uint8, mask H×W uint8)") from None
        rgb, mask = np.asarray(rgb), np.asarray(mask)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise DataError(f"{what} {i}: image must be H×W×3 uint8, got {rgb.shape} {rgb.dtype}")
        if mask.shape != rgb.shape[:2]:
            raise DataError(f"{what} {i}: mask {mask.shape} does not match image {rgb.shape[:2]}")
        if mask.size and (int(mask.min()) < 0 or int(mask.max()) > num_classes):
            raise DataError(f"{what} {i}: mask holds class ids up to {int(mask.max())}; this model has "
                            f"classes 1..{num_classes} (0 = not corrected)")
        out.append((rgb, mask.astype(np.uint8)))
    return out


def split_holdout(mask: np.ndarray, fraction: float, rng: np.random.Generator):
    """(train mask, held-out mask): whole ``BLOCK``-pixel blocks holding corrections go to the
    held-out side with probability ``fraction`` (at least one such block when there are two)."""
    if fraction <= 0:
        return mask, np.zeros_like(mask)
    h, w = mask.shape
    by, bx = -(-h // BLOCK), -(-w // BLOCK)
    padded = np.zeros((by * BLOCK, bx * BLOCK), bool)
    padded[:h, :w] = mask > 0
    has = padded.reshape(by, BLOCK, bx, BLOCK).any(axis=(1, 3))
    pick = (rng.random((by, bx)) < fraction) & has
    candidates = np.argwhere(has)
    if not pick.any() and len(candidates) >= 2:
        y, x = candidates[rng.integers(len(candidates))]
        pick[y, x] = True
    if pick.sum() == has.sum() and has.sum() >= 2:  # keep something to train on
        y, x = np.argwhere(pick)[rng.integers(pick.sum())]
        pick[y, x] = False
    held = np.kron(pick, np.ones((BLOCK, BLOCK), bool))[:h, :w]
    return np.where(held, 0, mask).astype(np.uint8), np.where(held, mask, 0).astype(np.uint8)


def _crop_around(rgb, mask, size, rng):
    """A ``size`` crop centred near a random corrected pixel (corrections are sparse on big regions)."""
    h, w = mask.shape
    if h <= size and w <= size:
        return rgb, mask
    ys, xs = np.nonzero(mask)
    i = int(rng.integers(len(ys)))
    y0 = int(np.clip(ys[i] - size // 2 + rng.integers(-size // 4, size // 4 + 1), 0, max(0, h - size)))
    x0 = int(np.clip(xs[i] - size // 2 + rng.integers(-size // 4, size // 4 + 1), 0, max(0, w - size)))
    return rgb[y0:y0 + size, x0:x0 + size], mask[y0:y0 + size, x0:x0 + size]


@torch.no_grad()
def _score(segmenter, pairs, criterion) -> tuple[float, float]:
    """(mean Dice over held-out classes, loss) of ``segmenter`` on ``pairs``."""
    k = segmenter.num_classes
    cm = np.zeros((k + 1, k + 1), np.int64)
    loss_sum, n = 0.0, 0
    for rgb, mask in pairs:
        logits = segmenter.predict_logits(rgb[None])["logits"]
        target = torch.from_numpy(mask.astype(np.int64))[None].to(logits.device)
        cm += confusion_matrix(logits.argmax(1) + 1, target, k)
        loss_sum += float(criterion(logits, target)) * int((mask > 0).sum())
        n += int((mask > 0).sum())
    if n == 0:
        return float("nan"), float("nan")
    return scores_from_confusion(cm)["mdice"], loss_sum / n


def finetune(segmenter, samples, *, steps: int = 200, batch_size: int = 4, crop: int = 256, lr: float | None = None,
             val_fraction: float = 0.2, replay=None, seed: int = 0, progress=None, cancel=None) -> FinetuneResult:
    """Fine-tune a copy of ``segmenter`` on corrected pixels.

    Arguments:
      segmenter: the :class:`napari_dfa.model.Segmenter` to start from (not modified).
      samples: list of ``(rgb uint8 H×W×3, mask uint8 H×W)``; mask 0 = not corrected (ignored).
      steps: optimizer steps.
      batch_size: crops per step.
      crop: crop size (rounded up to the model's input multiple); crops are centred near corrections.
      lr: learning rate (default 2e-4); δ trains at ``lr × delta_lr_multiplier`` without decay.
      val_fraction: share of the correction blocks held out to compare new against old.
      replay: earlier corrections (same form), mixed into training against forgetting.
      seed: seeds the hold-out split, crops and augmentation.
      progress: ``progress(step, total, loss=..., val_loss=...)`` after every step.
      cancel: ``cancel() -> bool`` checked before every step; raises :class:`Cancelled`.

    Returns: :class:`FinetuneResult`.
    """
    k = segmenter.num_classes
    samples = _check_samples(samples, k, "correction")
    replay = _check_samples(replay, k, "replay sample")
    corrected = int(sum((m > 0).sum() for _, m in samples))
    if corrected == 0:
        raise DataError("no corrected pixels: paint corrections (labels 1..K) before fine-tuning")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    train_pairs, val_pairs = [], []
    for rgb, mask in samples:
        tr, va = split_holdout(mask, val_fraction, rng)
        if (tr > 0).any():
            train_pairs.append((rgb, tr))
        if (va > 0).any():
            # Score only around the held-out pixels (a reviewed region can be large).
            ys, xs = np.nonzero(va)
            y0, y1 = max(0, ys.min() - BLOCK), min(va.shape[0], ys.max() + 1 + BLOCK)
            x0, x1 = max(0, xs.min() - BLOCK), min(va.shape[1], xs.max() + 1 + BLOCK)
            val_pairs.append((rgb[y0:y1, x0:x1], va[y0:y1, x0:x1]))
    train_pairs += [(rgb, m) for rgb, m in replay if (m > 0).any()]
    held = int(sum((m > 0).sum() for _, m in val_pairs))
    multiple = segmenter.input_multiple
    crop = int(math.ceil(crop / multiple) * multiple)

    new = copy.deepcopy(segmenter)  # the caller's model stays exactly as it was
    model = new.model
    device = new.device
    lr = 2e-4 if lr is None else float(lr)
    optimizer = make_optimizer(model, lr=lr, weight_decay=1e-4, delta_lr_multiplier=new.config.delta_lr_multiplier)
    criterion = SegmentationLoss(kind="focal_dice")
    aug = AugmentConfig(flip=True, rot90=True, stain=0.03, brightness=0.03)
    torch.manual_seed(seed)

    old_score, old_loss = _score(segmenter, val_pairs, criterion)
    history = [{"step": 0, "loss": None, "val_loss": old_loss, "val_score": old_score}]
    new.record_bias(phase="finetune", step=0)
    eval_every = max(1, steps // 10)
    val_loss = old_loss
    for step in range(steps):
        if cancel is not None and cancel():
            raise Cancelled(f"fine-tuning cancelled at step {step}/{steps}; the original model is unchanged")
        imgs, masks = [], []
        for j in range(batch_size):
            r = rng_for(seed, step, j)
            rgb, mask = train_pairs[int(r.integers(len(train_pairs)))]
            rgb, mask = _crop_around(rgb, mask, crop, r)
            rgb, mask = augment(rgb, mask, r, config=aug, crop=crop)
            imgs.append(rgb)
            masks.append(mask)
        x = torch.from_numpy(np.stack(imgs)).to(device).permute(0, 3, 1, 2).float().div_(255)
        y = torch.from_numpy(np.stack(masks).astype(np.int64)).to(device)
        model.train()
        loss = criterion(model(x)["logits"], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_v = float(loss.detach())
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            model.eval()
            score, val_loss = _score(new, val_pairs, criterion)
            history.append({"step": step + 1, "loss": loss_v, "val_loss": val_loss, "val_score": score})
        if progress is not None:
            progress(step + 1, steps, loss=loss_v, val_loss=val_loss)
    model.eval()
    new_score, _ = _score(new, val_pairs, criterion)
    promoted = bool(np.isnan(old_score) or new_score >= old_score)
    new.record_bias(phase="finetune", step=steps)
    parent_prov = segmenter.metadata.get("provenance") or {}
    new.metadata["provenance"] = {
        "parent": segmenter.metadata.get("source") or parent_prov.get("parent"),
        "parent_provenance": parent_prov,
        "data": "corrections",
        "corrections": {"corrected_pixels": corrected, "held_out_pixels": held, "samples": len(samples),
                        "replay_samples": len(replay)},
        "finetune": {"steps": steps, "lr": lr, "batch_size": batch_size, "crop": crop, "seed": seed,
                     "old_score": None if np.isnan(old_score) else old_score,
                     "new_score": None if np.isnan(new_score) else new_score, "promoted": promoted},
    }
    new.metadata.pop("source", None)  # not loaded from a file: saving stamps a fresh provenance
    logger.info("fine-tuned on %d corrected pixels (%d held out): score %.4f -> %.4f, promoted=%s",
             corrected, held, old_score, new_score, promoted)
    return FinetuneResult(segmenter=new, promoted=promoted, old_score=old_score, new_score=new_score,
                          history=history, corrected_pixels=corrected, held_out_pixels=held)
