"""Fine-tuning on a pathologist's corrections, with held-out scores per class.

Only corrected pixels train (everything else is the ignore label 0). A share of the corrections —
whole strokes, so no stroke sits on both sides — is held out, stratified by class
(:func:`split_holdout_by_stroke`): every corrected class with two strokes or more gets some held
out, and a class with too few is named in ``too_few`` instead of being scored on nothing. Old and new models are scored per class on the held-out pixels; whether the new
model replaces the old one is decided by :mod:`napari_dfa.corrections.guard`, which also looks at
what changed where nothing was corrected. Earlier corrections (or the current labels) can be
replayed against forgetting.

With ``frozen_encoder=True`` the encoder is kept fixed and its features of every training image are
computed once (:mod:`.frozen`); each step trains only the pixel decoder, the class tokens, the
decoder and δ, on crops around the corrections. That is several times cheaper per step and does not
slow down as much on a busy CPU.

The input Segmenter is never modified: the result is a deep copy with provenance (parent, number of
corrected pixels, held-out scores) and its b_c history extended.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import Cancelled, DataError
from .augment import augment, rng_for
from .config import AugmentConfig
from .frozen import FeatureCache, crop_features, decode_logits, logits_from_features, predict_region
from .holdout import HoldOut, all_stroke_signatures, plan_holdout, right_kept, stroke_counts
from .metrics import confusion_matrix, scores_from_confusion
from .optim import make_optimizer

logger = logging.getLogger(__name__)

BLOCK = 32  # margin in pixels of the box a held-out score is decoded in
FROZEN_LR = 1e-3  # decoder-only fine-tuning tolerates (and needs, for few steps) a larger step
FULL_LR = 2e-4
FINETUNE_DELTA_LR = 20.0


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune`.

    Arguments:
      segmenter: the fine-tuned copy (the input Segmenter is untouched).
      promoted: the held-out corrections alone say the new model is not worse (mean per-class Dice;
        True when nothing was held out). Not the whole verdict: see
        :func:`napari_dfa.corrections.guard.judge`.
      old_score / new_score: mean Dice over the held-out classes (NaN when nothing was held out).
      history: ``{"step", "loss", "val_loss", "val_score"}`` at every evaluation point.
      corrected_pixels: corrected pixels used (train + held out).
      held_out_pixels: corrected pixels held out for scoring.
      class_names: the model's classes (labels 1..K).
      corrected_per_class / held_out_per_class: pixels per class name.
      old_class_scores / new_class_scores: held-out Dice per class name, for the classes with at
        least :data:`~.holdout.MIN_HELD_OUT_PIXELS` held out.
      too_few: ``{class name: held-out pixels}`` of corrected classes that could not be scored.
      correction_confusion: (K+1)×(K+1) pixel counts over every corrected pixel, rows the
        correction, columns the old model's label there: what the corrections say was wrong.
      frozen_encoder: whether the encoder was kept fixed.
      seconds: wall time of the whole call.
      crop: the training crop side (after rounding to the model's input multiple).
    """

    segmenter: object
    promoted: bool
    old_score: float
    new_score: float
    history: list[dict] = field(default_factory=list)
    corrected_pixels: int = 0
    held_out_pixels: int = 0
    class_names: list[str] = field(default_factory=list)
    corrected_per_class: dict[str, int] = field(default_factory=dict)
    held_out_per_class: dict[str, int] = field(default_factory=dict)
    old_class_scores: dict[str, float] = field(default_factory=dict)
    new_class_scores: dict[str, float] = field(default_factory=dict)
    too_few: dict[str, int] = field(default_factory=dict)
    correction_confusion: np.ndarray | None = None
    frozen_encoder: bool = False
    seconds: float = 0.0
    steps: int = 0
    crop: int = 0
    cache: FeatureCache | None = field(default=None, repr=False)
    method: str = "deep"  # "head": napari_dfa.training.head.fit_head
    alternative: dict | None = None  # the other method's held-out score, when both ran (method "auto")
    # per label: (held-back verified pixels the old model had right, of them still right)
    right_kept: dict = field(default_factory=dict)
    # per held-back stroke: (label, old model's labels over it counted, new model's): stroke_counts
    strokes: tuple | None = None


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


def baseline_predictions(baseline, cache: FeatureCache, images) -> list[np.ndarray]:
    """Labels of the model corrections were made against, ``baseline = (segmenter, lut)``, in the
    new class list (``lut``: its label -> new label by name; a class it did not have is never
    predicted, so it scores 0 there, not the chance hits of a fresh class token). ``cache`` holds
    the same encoder's features (a class edit keeps the encoder)."""
    seg, lut = baseline
    shared = FeatureCache(seg.model, multiple=seg.input_multiple)
    shared._cache = cache._cache
    lut = np.asarray(lut, np.uint8)
    return [lut[np.clip(predict_region(seg, r, shared), 0, len(lut) - 1)] for r in images]


def correction_provenance(segmenter, samples, plan: HoldOut, settings: dict, old_scores: dict, new_scores: dict,
                          **corrections) -> dict:
    """The provenance of a model fine-tuned on ``samples``: its parent, the corrections (pixels per
    class, held back; ``corrections`` adds to them), the ``settings`` and scores of the run, and the
    signatures of the strokes it was trained on (the next run never holds those back)."""
    k, names = segmenter.num_classes, list(segmenter.class_names)
    old_score, new_score = _mean(old_scores), _mean(new_scores)
    parent_prov = segmenter.metadata.get("provenance") or {}
    return {
        "parent": segmenter.metadata.get("source") or parent_prov.get("parent"),
        "parent_provenance": parent_prov,
        "data": "corrections",
        "corrections": {"corrected_pixels": int(plan.per_class[1:].sum()),
                        "held_out_pixels": int(plan.held_per_class[1:].sum()), "samples": len(samples),
                        **corrections,
                        "per_class": {names[c - 1]: int(plan.per_class[c]) for c in range(1, k + 1) if plan.per_class[c]}},
        "finetune": {**settings, "old_score": None if np.isnan(old_score) else old_score,
                     "new_score": None if np.isnan(new_score) else new_score,
                     "old_class_scores": old_scores, "new_class_scores": new_scores,
                     "held_out_too_few": dict(plan.too_few),
                     "promoted": bool(np.isnan(old_score) or new_score >= old_score),
                     "strokes": all_stroke_signatures(samples, k)},
    }


def _box(mask: np.ndarray, margin: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """32-aligned (y0, x0, h, w) around the labelled pixels of ``mask`` plus ``margin``, inside the
    padded image ``shape``."""
    ys, xs = np.nonzero(mask)
    H, W = shape
    y0 = max(0, (int(ys.min()) - margin) // 32 * 32)
    x0 = max(0, (int(xs.min()) - margin) // 32 * 32)
    y1 = min(H, -(-(int(ys.max()) + 1 + margin) // 32) * 32)
    x1 = min(W, -(-(int(xs.max()) + 1 + margin) // 32) * 32)
    return y0, x0, y1 - y0, x1 - x0


def _padded_shape(shape, multiple: int) -> tuple[int, int]:
    return (-(-shape[0] // multiple) * multiple, -(-shape[1] // multiple) * multiple)


@torch.no_grad()
def _evaluate(model, cache: FeatureCache, pairs, k: int, criterion) -> tuple[np.ndarray, float]:
    """(confusion (K+1)×(K+1) over the labelled pixels of ``pairs``, mean loss per pixel). Each pair
    is (rgb, mask) and is scored inside a box around its labels, decoded as inference decodes."""
    cm = np.zeros((k + 1, k + 1), np.int64)
    loss_sum, n = 0.0, 0
    model.eval()
    for rgb, mask in pairs:
        feats = cache.features(rgb)
        H, W = feats[0].shape[-2] * 4, feats[0].shape[-1] * 4
        y0, x0, h, w = _box(mask, BLOCK, (H, W))
        logits = logits_from_features(model, crop_features(feats, y0, x0, h, w), (h, w))
        sub = np.zeros((h, w), np.int64)
        mh, mw = min(h, mask.shape[0] - y0), min(w, mask.shape[1] - x0)
        sub[:mh, :mw] = mask[y0:y0 + mh, x0:x0 + mw]
        target = torch.from_numpy(sub)[None].to(logits.device)
        cm += confusion_matrix(logits.argmax(1) + 1, target, k)
        px = int((sub > 0).sum())
        loss_sum += float(criterion(logits, target)) * px
        n += px
    return cm, (loss_sum / n if n else float("nan"))


def finetune_loss(flat: torch.Tensor, t: torch.Tensor, *, focal_weight: float = 0.25, dice_weight: float = 0.75,
                  gamma: float = 2.0) -> torch.Tensor:
    """The training loss on corrected pixels: focal + soft Dice, the Dice over the classes present in
    the batch's labels only.

    The training loss (:class:`~.losses.SegmentationLoss`) takes the Dice over all K classes, so a
    class absent from a batch is pushed towards zero probability everywhere; over a whole dataset
    every class appears often enough to balance that, but corrections are sparse and often of one
    or two classes, and the push made the other classes vanish from the fine-tuned model.

    Arguments: flat, N×K logits of the labelled pixels; t, their classes 0..K-1.
    """
    if t.numel() == 0:
        return flat.sum() * 0.0
    logp = F.log_softmax(flat.float(), dim=1)
    lp = logp.gather(1, t[:, None]).squeeze(1)
    focal = (-((1 - lp.exp()) ** gamma) * lp).mean()
    p = logp.exp()
    present = torch.unique(t)
    g = F.one_hot(t, flat.shape[1]).to(p.dtype)[:, present]
    pc = p[:, present]
    dice = (1 - (2 * (pc * g).sum(0) + 1.0) / (pc.sum(0) + g.sum(0) + 1.0)).mean()
    return focal_weight * focal + dice_weight * dice


def _labelled(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N×K logits, N classes 0..K-1) of the labelled pixels (target > 0) of a B×K×H×W batch."""
    k = logits.shape[1]
    flat = logits.permute(0, 2, 3, 1).reshape(-1, k)
    t = target.reshape(-1)
    keep = t > 0
    return flat[keep], t[keep] - 1


def _per_class_dice(cm: np.ndarray, names: list[str], scored: list[str]) -> dict[str, float]:
    dice = scores_from_confusion(cm)["dice"]
    return {n: float(dice[i]) for i, n in enumerate(names) if n in scored}


def _mean(scores: dict[str, float]) -> float:
    return float(np.mean(list(scores.values()))) if scores else float("nan")


def _crop_box_around(mask: np.ndarray, size: int, shape: tuple[int, int], rng) -> tuple[int, int, int, int]:
    """A 32-aligned ``size`` box (clipped to the padded ``shape``) near a random labelled pixel."""
    H, W = shape
    h, w = min(size, H), min(size, W)
    ys, xs = np.nonzero(mask)
    i = int(rng.integers(len(ys)))
    cy = ys[i] + int(rng.integers(-size // 4, size // 4 + 1))
    cx = xs[i] + int(rng.integers(-size // 4, size // 4 + 1))
    y0 = int(np.clip((cy - h // 2) // 32 * 32, 0, H - h))
    x0 = int(np.clip((cx - w // 2) // 32 * 32, 0, W - w))
    return y0, x0, h, w


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


def finetune(segmenter, samples, *, steps: int = 200, batch_size: int = 4, crop: int = 256, lr: float | None = None,
             val_fraction: float = 0.2, replay=None, seed: int = 0, frozen_encoder: bool = False,
             cache: FeatureCache | None = None, delta_lr_multiplier: float | None = None,
             baseline=None, progress=None, cancel=None) -> FinetuneResult:
    """Fine-tune a copy of ``segmenter`` on corrected pixels.

    Arguments:
      segmenter: the :class:`napari_dfa.model.Segmenter` to start from (not modified).
      samples: list of ``(rgb uint8 H×W×3, mask uint8 H×W)``; mask 0 = not corrected (ignored).
      steps: optimizer steps.
      batch_size: crops per step.
      crop: crop size (rounded up to the model's input multiple); crops are centred near corrections.
      lr: learning rate (default 1e-3 with a frozen encoder, else 2e-4); δ trains at
        ``lr × delta_lr_multiplier`` without decay.
      val_fraction: share of each class's correction blocks held out to compare new against old.
      replay: earlier corrections or current labels (same form), mixed into training against
        forgetting; never held out.
      seed: seeds the hold-out split, crops and augmentation.
      frozen_encoder: keep the encoder fixed and train on its cached features (no augmentation:
        the features are computed once per image).
      cache: a :class:`~.frozen.FeatureCache` of the input model's encoder to fill and reuse (with
        ``frozen_encoder``); the caller can score other images with it afterwards.
      baseline: ``(segmenter, lut)``: the model the corrections were made against when
        ``segmenter`` is it after a class edit (:func:`baseline_predictions`); the old scores are its.
      progress: ``progress(step, total, loss=..., val_loss=...)`` after every step.
      cancel: ``cancel() -> bool`` checked before every step; raises :class:`Cancelled`.

    Returns: :class:`FinetuneResult`.
    """
    t0 = time.monotonic()
    k = segmenter.num_classes
    names = list(segmenter.class_names)
    samples = _check_samples(samples, k, "correction")
    replay = _check_samples(replay, k, "replay sample")
    corrected = int(sum((m > 0).sum() for _, m in samples))
    if corrected == 0:
        raise DataError("no corrected pixels: paint corrections (labels 1..K) before fine-tuning")
    plan = plan_holdout(segmenter, samples, val_fraction, seed)
    train_pairs, val_pairs = [], []
    for (rgb, _), (tr, va) in zip(samples, plan.splits):
        if (tr > 0).any():
            train_pairs.append((rgb, tr))
        if (va > 0).any():
            val_pairs.append((rgb, va))
    train_pairs += [(rgb, m) for rgb, m in replay if (m > 0).any()]
    if not train_pairs:  # a single block: it cannot be split, train on it (and say so below)
        train_pairs = [(rgb, m) for rgb, m in samples if (m > 0).any()]
    per_class, held_cls, scored, too_few = plan.per_class, plan.held_per_class, plan.scored, plan.too_few
    held = int(held_cls[1:].sum())
    multiple = segmenter.input_multiple
    crop = int(math.ceil(crop / multiple) * multiple)

    new = copy.deepcopy(segmenter)  # the caller's model stays exactly as it was
    model = new.model
    device = new.device
    if frozen_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    lr = (FROZEN_LR if frozen_encoder else FULL_LR) if lr is None else float(lr)
    if delta_lr_multiplier is None:
        delta_lr_multiplier = FINETUNE_DELTA_LR if frozen_encoder else new.config.delta_lr_multiplier
    optimizer = make_optimizer(model, lr=lr, weight_decay=1e-4, delta_lr_multiplier=delta_lr_multiplier)

    def criterion(logits, y):
        return finetune_loss(*_labelled(logits, y))

    aug = AugmentConfig(flip=True, rot90=True, stain=0.03, brightness=0.03)
    torch.manual_seed(seed)

    # The old model's encoder features: shared with the new model while its encoder is frozen.
    old_cache = cache if cache is not None and cache.model is segmenter.model else \
        FeatureCache(segmenter.model, multiple=multiple)
    old_cm, old_loss = _evaluate(segmenter.model, old_cache, val_pairs, k, criterion)
    # What the corrections say was wrong: the old model's labels under every corrected pixel.
    corrected_pairs = [(r, m) for r, m in samples if (m > 0).any()]
    # The old model's labels of each image, once: held-back scores (with a baseline), what the
    # corrections changed (with a baseline) and what it had right (always).
    images = list({id(r): r for r, _ in (val_pairs + corrected_pairs if baseline is not None else val_pairs)}.values())
    old_labels = dict(zip(map(id, images), baseline_predictions(baseline, old_cache, images) if baseline is not None
                          else [predict_region(segmenter, r, old_cache) for r in images]))
    if baseline is not None:  # the model before a class edit, scored in the new list by name
        old_cm = sum((confusion_matrix(old_labels[id(r)], m, k) for r, m in val_pairs),
                     np.zeros((k + 1, k + 1), np.int64))
        confusion = sum((confusion_matrix(old_labels[id(r)], m, k) for r, m in corrected_pairs),
                        np.zeros((k + 1, k + 1), np.int64))
    else:
        confusion, _ = _evaluate(segmenter.model, old_cache, corrected_pairs, k, criterion)
    old_scores = _per_class_dice(old_cm, names, scored)
    history = [{"step": 0, "loss": None, "val_loss": old_loss, "val_score": _mean(old_scores)}]
    new.record_bias(phase="finetune", step=0)
    eval_every = max(1, steps // 10)
    val_loss = old_loss

    def new_cache() -> FeatureCache:
        # frozen: the features never change; full: the encoder moves, so every evaluation encodes again
        return old_cache if frozen_encoder else FeatureCache(model, multiple=multiple)

    for step in range(steps):
        if cancel is not None and cancel():
            raise Cancelled(f"fine-tuning cancelled at step {step}/{steps}; the original model is unchanged")
        model.train()
        if frozen_encoder:
            model.encoder.eval()
            flats, ts = [], []
            for j in range(batch_size):
                r = rng_for(seed, step, j)
                rgb, mask = train_pairs[int(r.integers(len(train_pairs)))]
                feats = old_cache.features(rgb)
                shape = (feats[0].shape[-2] * 4, feats[0].shape[-1] * 4)
                y0, x0, h, w = _crop_box_around(mask, crop, shape, r)
                target = np.zeros((h, w), np.int64)
                mh, mw = min(h, mask.shape[0] - y0), min(w, mask.shape[1] - x0)
                target[:mh, :mw] = mask[y0:y0 + mh, x0:x0 + mw]
                if not (target > 0).any():
                    continue
                logits = decode_logits(model, crop_features(feats, y0, x0, h, w), (h, w))
                flat, t = _labelled(logits, torch.from_numpy(target)[None].to(device))
                flats.append(flat)
                ts.append(t)
            loss = finetune_loss(torch.cat(flats), torch.cat(ts))
        else:
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
            loss = finetune_loss(*_labelled(model(x)["logits"], y))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_v = float(loss.detach())
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            cm, val_loss = _evaluate(model, new_cache(), val_pairs, k, criterion)
            history.append({"step": step + 1, "loss": loss_v, "val_loss": val_loss,
                            "val_score": _mean(_per_class_dice(cm, names, scored))})
        if progress is not None:
            progress(step + 1, steps, loss=loss_v, val_loss=val_loss)
    model.eval()
    if frozen_encoder:
        for p in model.encoder.parameters():  # frozen for this run only: the checkpoint trains as before
            p.requires_grad_(not segmenter.config.freeze_encoder)
    new_cm, _ = _evaluate(model, new_cache(), val_pairs, k, criterion)
    new_scores = _per_class_dice(new_cm, names, scored)
    val_old = [old_labels[id(r)] for r, _ in val_pairs]
    val_new = [predict_region(new, r, new_cache()) for r, _ in val_pairs]
    kept_right = right_kept(val_old, val_new, [m for _, m in val_pairs])
    strokes = stroke_counts(val_old, val_new, [m for _, m in val_pairs], k)
    old_score, new_score = _mean(old_scores), _mean(new_scores)
    promoted = bool(np.isnan(old_score) or new_score >= old_score)
    new.record_bias(phase="finetune", step=steps)
    seconds = time.monotonic() - t0
    new.metadata["provenance"] = correction_provenance(
        segmenter, samples, plan, {"steps": steps, "lr": lr, "batch_size": batch_size, "crop": crop, "seed": seed,
                                   "frozen_encoder": bool(frozen_encoder)},
        old_scores, new_scores, replay_samples=len(replay))
    new.metadata.pop("source", None)  # not loaded from a file: saving stamps a fresh provenance
    logger.info("fine-tuned on %d corrected pixels (%d held out, encoder %s): score %.4f -> %.4f in %.1f s",
                corrected, held, "frozen" if frozen_encoder else "trained", old_score, new_score, seconds)
    return FinetuneResult(
        segmenter=new, promoted=promoted, old_score=old_score, new_score=new_score, history=history,
        corrected_pixels=corrected, held_out_pixels=held, class_names=names,
        corrected_per_class={names[c - 1]: int(per_class[c]) for c in range(1, k + 1) if per_class[c]},
        held_out_per_class={names[c - 1]: int(held_cls[c]) for c in range(1, k + 1) if held_cls[c]},
        old_class_scores=old_scores, new_class_scores=new_scores, too_few=too_few,
        correction_confusion=confusion, frozen_encoder=bool(frozen_encoder), seconds=seconds, steps=steps,
        crop=int(crop), cache=old_cache if frozen_encoder else None, right_kept=kept_right,
        strokes=strokes)

