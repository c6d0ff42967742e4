"""Fitting the pixel head (:mod:`napari_dfa.model.pixel_head`) on verified pixels, in seconds.

The head is fitted from scratch on every verified pixel (corrections and confirmed regions) each
time: the pixels are few, so the head's features are computed once per image at the labelled
pixels only, and each step is a small MLP on a few thousand vectors. Everything before the head —
encoder, pixel decoder, DFA decoder and bias — stays as it is.

Scores: a first head is fitted without a share of the strokes (held out whole,
:func:`~.finetune.split_holdout_by_stroke`) and scored on them against the model it starts from;
the head delivered is then fitted on every stroke with the same settings, as a pathologist expects
every stroke to count (the scores are those of the method on this evidence, as in
cross-validation).
"""

from __future__ import annotations

import copy
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import Cancelled, DataError
from ..model.device import torch_threads
from ..model.pixel_head import PixelHead
from .finetune import (
    FinetuneResult,
    _check_samples,
    baseline_predictions,
    _mean,
    _per_class_dice,
    correction_provenance,
    plan_holdout,
    right_kept,
)
from .frozen import FeatureCache, predict_region
from .metrics import confusion_matrix

logger = logging.getLogger(__name__)

HEAD_SIGMAS = (1.0, 2.0, 4.0, 8.0, 16.0)
HEAD_HIDDEN = 64
HEAD_SMOOTH = 16.0
HEAD_STRIDE = 2
# Measured (benchmarks: the demo's own tissue with truth-painted strokes and confirmed regions, and a
# real-pixel mosaic with an own class list): 150 steps, classes weighted by the square root of their
# inverse share, no label smoothing. Label smoothing 0.1 shrank the model's confident logits and let
# the head repaint tissue the model had right (0.91 -> 0.60 mean Dice where nothing was corrected);
# 300 steps or full inverse weights cost 0.01-0.03 there; 150 steps kept it (0.907 -> 0.905).
HEAD_STEPS = 150
HEAD_LR = 3e-3
HEAD_BATCH = 1024
HEAD_LABEL_SMOOTHING = 0.0
HEAD_CLASS_WEIGHT = 0.5  # power of the inverse class share in the loss weights (0: unweighted)
HEAD_CONTEXT = 64  # tile overlap a model with a head asks for: its σ and smoothing reach this far


@torch.no_grad()
def _gather(model, head: PixelHead, cache: FeatureCache, samples, held_masks, stride: int):
    """The head's raw (unstandardised) features, the model's logits and the labels at the labelled
    pixels of the head's grid (one pixel per ``stride``² block) of every sample, with a flag
    for the held-out ones; and the features' mean and std over every pixel of the images."""
    feats_l, base_l, y_l, held_l = [], [], [], []
    total = total_sq = None
    count = 0
    head.mean.zero_()
    head.std.fill_(1.0)
    for (rgb, mask), held in zip(samples, held_masks):
        feats = cache.features(rgb)
        masks, _, fused = model.decode_masks(list(feats), glass=getattr(feats, "glass", None))
        f = head.features(feats.image, torch.cat([fused, masks], 1))[0]  # n×h×w at the head's stride
        base = F.interpolate(masks.float(), size=f.shape[-2:], mode="bilinear", align_corners=False)[0]
        c = f.reshape(f.shape[0], -1)
        total = c.sum(1) if total is None else total + c.sum(1)
        total_sq = (c * c).sum(1) if total_sq is None else total_sq + (c * c).sum(1)
        count += c.shape[1]
        grid = _block_label(mask, stride, f.shape[-2:])
        hgrid = _block_label(held, stride, f.shape[-2:]) > 0
        ys, xs = np.nonzero(grid)
        iy, ix = torch.from_numpy(ys), torch.from_numpy(xs)
        feats_l.append(f[:, iy, ix].T.contiguous())
        base_l.append(base[:, iy, ix].T.contiguous())
        y_l.append(torch.from_numpy(grid[ys, xs] - 1))
        held_l.append(torch.from_numpy(hgrid[ys, xs]))
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-10).sqrt()
    return (torch.cat(feats_l), torch.cat(base_l), torch.cat(y_l), torch.cat(held_l)), mean, std


def _block_label(mask: np.ndarray, stride: int, shape) -> np.ndarray:
    """The label of each ``stride``² block of ``mask`` on the head's grid of ``shape``: its largest
    label (a block holds one class but at a stroke's border), so that a stroke thinner than the
    stride still counts."""
    h, w = shape
    padded = np.zeros((h * stride, w * stride), np.int64)
    mh, mw = min(mask.shape[0], h * stride), min(mask.shape[1], w * stride)
    padded[:mh, :mw] = mask[:mh, :mw]
    return padded.reshape(h, stride, w, stride).max(axis=(1, 3))


def _fit(head: PixelHead, data, mean, std, *, steps: int, seed: int, progress=None, cancel=None, offset=0,
         total_steps=None) -> list[float]:
    """Train ``head``'s MLP and base scale on the gathered vectors ``(x, base, y)``; returns the losses."""
    head.mean.copy_(mean)
    head.std.copy_(std)
    x, base, y = data
    x = (x - mean) / std
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():  # seeded without touching the caller's generator
        torch.manual_seed(seed)
        for m in head.mlp:  # a fresh head each time: the same strokes give the same head
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    torch.nn.init.zeros_(head.mlp[2].weight)
    torch.nn.init.zeros_(head.mlp[2].bias)
    head.base_scale.data.fill_(1.0)
    params = [head.base_scale, *head.mlp.parameters()]
    opt = torch.optim.AdamW(params, lr=HEAD_LR, weight_decay=1e-2)
    # Classes weighted by (the square root of) their inverse share: a rare class's few strokes count.
    counts = torch.bincount(y, minlength=base.shape[1]).float()
    power = float(HEAD_CLASS_WEIGHT)
    weight = torch.where(counts > 0, (counts.sum() / (counts.clamp_min(1) * (counts > 0).sum())) ** power,
                         torch.zeros_like(counts))
    head.train()
    # One thread: the steps are tiny, and on a busy 2-core CPU two threads spin-waited for each
    # other: 300 steps took 71 s instead of 4.7 s (measured with a test run beside it).
    with torch_threads(1):
        losses = _steps(head, x, base, y, weight, opt, g, steps, progress, cancel, offset, total_steps)
    head.eval()
    return losses


def _steps(head, x, base, y, weight, opt, g, steps, progress, cancel, offset, total_steps) -> list[float]:
    w1, w2 = head.mlp[0], head.mlp[2]
    losses = []
    for step in range(steps):
        if cancel is not None and cancel():
            raise Cancelled(f"fitting the pixel head cancelled at step {step}/{steps}; the original model is unchanged")
        idx = torch.randint(0, len(y), (min(HEAD_BATCH, len(y)),), generator=g)
        hidden = F.gelu(F.linear(x[idx], w1.weight[:, :, 0, 0], w1.bias))
        logits = head.base_scale * base[idx] + F.linear(hidden, w2.weight[:, :, 0, 0], w2.bias)
        loss = F.cross_entropy(logits, y[idx], weight=weight,
                               label_smoothing=HEAD_LABEL_SMOOTHING)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(offset + step + 1, total_steps or steps, loss=losses[-1], val_loss=None)
    return losses


def _predictions(segmenter, cache: FeatureCache, samples) -> list[np.ndarray]:
    """The model's labels of every sample image, head, smoothing and all, as segment labels them."""
    return [predict_region(segmenter, rgb, cache) for rgb, _ in samples]


def _confusion(preds, masks, k: int) -> np.ndarray:
    """(K+1)×(K+1) over the labelled pixels of ``masks``: rows the label, columns the prediction."""
    cm = np.zeros((k + 1, k + 1), np.int64)
    for pred, mask in zip(preds, masks):
        if (mask > 0).any():
            cm += confusion_matrix(pred, mask, k)
    return cm


def with_head(segmenter, *, sigmas=HEAD_SIGMAS, hidden: int = HEAD_HIDDEN, smooth: float = HEAD_SMOOTH,
              stride: int = HEAD_STRIDE):
    """A copy of ``segmenter`` with a fresh pixel head (replacing any it had); the rest shares
    nothing with the input."""
    new = copy.deepcopy(segmenter)
    cfg = new.config.replace(head_sigmas=tuple(float(s) for s in sigmas), head_hidden=int(hidden),
                             head_smooth=float(smooth), head_stride=int(stride),
                             context=max(new.config.context, HEAD_CONTEXT))
    model = new.model
    model.config = cfg
    model.head = PixelHead(num_classes=cfg.num_classes, deep_channels=cfg.pixel_dim + cfg.num_classes,
                           sigmas=cfg.head_sigmas, hidden=cfg.head_hidden, smooth=cfg.head_smooth,
                           stride=cfg.head_stride).to(new.device)
    return new


def fit_head(segmenter, samples, *, steps: int = HEAD_STEPS, val_fraction: float = 0.2, seed: int = 0,
             cache: FeatureCache | None = None, baseline=None, progress=None, cancel=None,
             **head) -> FinetuneResult:
    """Fit a pixel head on the verified pixels of ``samples`` (see the module docstring).

    Arguments:
      segmenter: the :class:`~napari_dfa.model.Segmenter` to start from (not modified); a head it
        has is replaced by a new one fitted on all of ``samples``.
      samples: ``[(rgb uint8 H×W×3, mask uint8 H×W)]``, mask 0 = not verified.
      steps: optimizer steps of each of the two fits.
      val_fraction: share of each class's strokes held out for the scores (as :func:`~.finetune.finetune`:
        the same seed holds back the same strokes, so the two methods are scored alike).
      cache: a :class:`FeatureCache` of ``segmenter``'s encoder to fill and reuse.
      baseline / progress / cancel: as :func:`~.finetune.finetune`.
      head: ``sigmas``, ``hidden``, ``smooth``, ``stride`` of :func:`with_head`.

    Returns: a :class:`~.finetune.FinetuneResult` (``frozen_encoder`` True, ``crop`` 0).
    """
    t0 = time.monotonic()
    k = segmenter.num_classes
    names = list(segmenter.class_names)
    samples = [(r, m) for r, m in _check_samples(samples, k, "correction") if (m > 0).any()]
    corrected = int(sum((m > 0).sum() for _, m in samples))
    if corrected == 0:
        raise DataError("no corrected pixels: paint corrections (labels 1..K) before fine-tuning")
    plan = plan_holdout(segmenter, samples, val_fraction, seed)
    held_masks = [va for _, va in plan.splits]
    per_class, held_cls, scored, too_few = plan.per_class, plan.held_per_class, plan.scored, plan.too_few

    new = with_head(segmenter, **head)
    model, hd = new.model, new.model.head
    multiple = segmenter.input_multiple
    # The encoder is shared: the old model's features serve the new one (and the caller's guard).
    old_cache = cache if cache is not None and cache.model is segmenter.model else \
        FeatureCache(segmenter.model, multiple=multiple)
    new_cache = FeatureCache(model, multiple=multiple)
    new_cache._cache = old_cache._cache  # same encoder weights: the same features
    model.eval()
    (x, base, y, is_held), mean, std = _gather(model, hd, new_cache, samples, held_masks, hd.stride)
    old_preds = (baseline_predictions(baseline, old_cache, [r for r, _ in samples]) if baseline is not None
                 else _predictions(segmenter, old_cache, samples))
    any_held = bool(is_held.any())
    total_steps = 2 * steps if any_held else steps
    history = []
    new_scores: dict[str, float] = {}
    old_scores: dict[str, float] = {}
    kept_right: dict = {}
    if any_held:
        keep = ~is_held
        losses = _fit(hd, (x[keep], base[keep], y[keep]), mean, std, steps=steps, seed=seed, progress=progress,
                      cancel=cancel, total_steps=total_steps)
        with_held = [i for i, va in enumerate(held_masks) if (va > 0).any()]
        new_preds = _predictions(new, new_cache, [samples[i] for i in with_held])
        old_scores = _per_class_dice(_confusion([old_preds[i] for i in with_held],
                                                [held_masks[i] for i in with_held], k), names, scored)
        new_scores = _per_class_dice(_confusion(new_preds, [held_masks[i] for i in with_held], k), names, scored)
        kept_right = right_kept([old_preds[i] for i in with_held], new_preds, [held_masks[i] for i in with_held])
        history.append({"step": steps, "loss": losses[-1], "val_loss": None, "val_score": _mean(new_scores)})
    losses = _fit(hd, (x, base, y), mean, std, steps=steps, seed=seed, progress=progress, cancel=cancel,
                  offset=total_steps - steps, total_steps=total_steps)
    history.append({"step": total_steps, "loss": losses[-1], "val_loss": None, "val_score": None})
    # What the corrections say was wrong: the old model's labels under every corrected pixel.
    confusion = _confusion(old_preds, [m for _, m in samples], k)
    old_score, new_score = _mean(old_scores), _mean(new_scores)
    promoted = bool(np.isnan(old_score) or new_score >= old_score)
    seconds = time.monotonic() - t0
    new.metadata["provenance"] = correction_provenance(
        segmenter, samples, plan, {"method": "head", "steps": steps, "seed": seed, "frozen_encoder": True,
                                   "head": {"sigmas": list(hd.sigmas), "hidden": int(hd.mlp[0].out_channels),
                                            "smooth": hd.smooth, "stride": hd.stride}},
        old_scores, new_scores)
    new.metadata.pop("source", None)
    logger.info("pixel head fitted on %d verified pixels (%d held out): score %.4f -> %.4f in %.1f s",
                corrected, int(held_cls[1:].sum()), old_score, new_score, seconds)
    return FinetuneResult(
        segmenter=new, promoted=promoted, old_score=old_score, new_score=new_score, history=history,
        corrected_pixels=corrected, held_out_pixels=int(held_cls[1:].sum()), class_names=names,
        corrected_per_class={names[c - 1]: int(per_class[c]) for c in range(1, k + 1) if per_class[c]},
        held_out_per_class={names[c - 1]: int(held_cls[c]) for c in range(1, k + 1) if held_cls[c]},
        old_class_scores=old_scores, new_class_scores=new_scores, too_few=too_few,
        correction_confusion=confusion, frozen_encoder=True, seconds=seconds, steps=steps, crop=0,
        cache=old_cache, method="head", right_kept=kept_right)
