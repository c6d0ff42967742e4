"""Fitting the pixel head (:mod:`napari_dfa.model.pixel_head`) on verified pixels, in seconds.

The head is fitted from scratch on every verified pixel (corrections and confirmed regions) each
time: the pixels are few, so the head's features are computed once per image at the labelled
pixels only, and each step is a small MLP on a few thousand vectors. Everything before the head —
encoder, pixel decoder, DFA decoder and bias — stays as it is.

Scores, as in cross-validation: every stroke is held back whole in one of a few folds
(:func:`~.holdout.fold_strokes`), a head is fitted without each fold and scored on its strokes
against the model it starts from, so every verified pixel is evidence (one split held back one or
two strokes a class, and the guard's verdict on a real-pixel set flipped with the seed). The
scoring classifies windows of features kept from the one pass over the samples (a fold's fit and
score take about a second on a CPU); the head delivered is then fitted on every stroke with the
same settings, as a pathologist expects every stroke to count.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import Cancelled, DataError
from ..model.device import torch_threads
from ..model.pixel_head import PixelHead
from .finetune import (
    FinetuneResult,
    _check_samples,
    _mean,
    _per_class_dice,
    baseline_predictions,
    correction_provenance,
)
from .frozen import FeatureCache, predict_region
from .holdout import plan_folds, right_kept, seen_stroke_maps, stroke_counts, trained_strokes
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
# Folds of the hold-out: every stroke is scored by a head fitted without it (a fit is ~1 s on a CPU).
HEAD_FOLDS = 4
HEAD_LR = 3e-3
HEAD_BATCH = 1024
HEAD_LABEL_SMOOTHING = 0.0
HEAD_CLASS_WEIGHT = 0.5  # power of the inverse class share in the loss weights (0: unweighted)
HEAD_FREE_CELLS = 4096  # unverified cells per sample the head may be asked to leave be
HEAD_SURE = 0.9  # the model's probability above which its answer there is kept (classes in ``keep``)
HEAD_KEEP = 1.0  # weight of keeping them against learning the verified pixels
HEAD_CARVED_SHARE = 0.25  # of a new class's strokes the old model labels X: the new class is carved out of X
# Where such an X is sure, the new class's share of the kept answer: X stays the answer where no
# stroke says otherwise, and strokes of the new class win beside it. Measured (bench_corrections, own
# class list, "invasive front" carved out of tumour, 3 rounds): 0.15 did not learn the front (0.02-0.04
# where nobody painted, slide 1), 0.3 half (0.11-0.66, slides 1 and 2), 0.45 did (0.42-0.76).
HEAD_CARVED_PRIOR = 0.45
HEAD_CONTEXT_SIGMAS = (8.0, 16.0)  # where the head reads the model's classes around a pixel
HEAD_CONTEXT = 64  # tile overlap a model with a head asks for: its σ and smoothing reach this far


@dataclass
class _Window:
    """A box of one sample around strokes held back for scoring, with what the head reads there:
    each fold's head is scored by classifying these, not by decoding the sample again."""

    sample: int
    pixels: tuple[int, int, int, int]  # (y0, x0, y1, x1) in the sample's pixels
    raw: torch.Tensor  # n×h×w unstandardised head features (the head's grid)
    base: torch.Tensor  # K×h×w the model's logits on the head's grid


def _windows(i: int, folds: np.ndarray, f: torch.Tensor, base: torch.Tensor, head: PixelHead,
             shape: tuple[int, int]) -> list[_Window]:
    """Windows of sample ``i`` around its held-back strokes (``folds > 0``), wide enough that the
    head's smoothing there reads the same grid cells as over the whole sample."""
    from scipy import ndimage

    stride = head.stride
    grid = _block_label(folds.astype(np.int64), stride, f.shape[-2:]) > 0
    if not grid.any():
        return []
    sigma = head.smooth / stride
    margin = (max(1, int(4 * sigma + 0.5)) if sigma > 0 else 0) + 2  # blur radius (pixel_head.blur) + resize
    near, _ = ndimage.label(ndimage.binary_dilation(grid, iterations=margin) if margin else grid)
    out = []
    for sl in ndimage.find_objects(near):
        gy0, gy1, gx0, gx1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        y1, x1 = min(gy1 * stride, shape[0]), min(gx1 * stride, shape[1])
        out.append(_Window(i, (gy0 * stride, gx0 * stride, y1, x1), f[:, gy0:gy1, gx0:gx1].clone(),
                           base[:, gy0:gy1, gx0:gx1].clone()))
    return out


@torch.no_grad()
def _window_labels(head: PixelHead, w: _Window) -> np.ndarray:
    """The fitted head's labels (1..K) over a window's pixels, as the model labels them there."""
    x = (w.raw - head.mean.view(-1, 1, 1)) / head.std.view(-1, 1, 1)
    gh, gw = x.shape[-2:]
    logits = head.finish(head.classify(x[None], w.base[None]), (gh * head.stride, gw * head.stride))
    y0, x0, y1, x1 = w.pixels
    return (logits[0, :, :y1 - y0, :x1 - x0].argmax(0) + 1).to(torch.uint8).numpy()


@torch.no_grad()
def _gather(model, head: PixelHead, cache: FeatureCache, samples, held_masks, stride: int):
    """The head's raw (unstandardised) features, the model's logits and the labels at the labelled
    pixels of the head's grid (one pixel per ``stride``² block) of every sample, with the fold each
    is held back in (0: none; ``held_masks`` are per-sample fold maps); the features' mean and std
    over every pixel of the images; the windows around held-back strokes (:func:`_windows`); and
    each sample's grid shape."""
    feats_l, base_l, y_l, held_l, free_x, free_b, shapes = [], [], [], [], [], [], []
    rng = np.random.default_rng(0)
    windows: list[_Window] = []
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
        shapes.append(tuple(f.shape[-2:]))
        hgrid = _block_label(held.astype(np.int64), stride, f.shape[-2:])
        windows += _windows(len(y_l), held, f, base, head, mask.shape)
        ys, xs = np.nonzero(grid)
        iy, ix = torch.from_numpy(ys), torch.from_numpy(xs)
        feats_l.append(f[:, iy, ix].T.contiguous())
        base_l.append(base[:, iy, ix].T.contiguous())
        y_l.append(torch.from_numpy(grid[ys, xs] - 1))
        held_l.append(torch.from_numpy(hgrid[ys, xs]))
        fy, fx = np.nonzero(grid == 0)  # nothing verified there: where the model's own answer may stand
        if len(fy):
            pick = rng.choice(len(fy), size=min(len(fy), HEAD_FREE_CELLS), replace=False)
            iy, ix = torch.from_numpy(fy[pick]), torch.from_numpy(fx[pick])
            free_x.append(f[:, iy, ix].T.contiguous())
            free_b.append(base[:, iy, ix].T.contiguous())
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-10).sqrt()
    free = (torch.cat(free_x), torch.cat(free_b)) if free_x else None
    return (torch.cat(feats_l), torch.cat(base_l), torch.cat(y_l), torch.cat(held_l)), mean, std, windows, free, shapes


def _grids(mask: np.ndarray, seen: np.ndarray, stride: int, shape) -> tuple[np.ndarray, np.ndarray]:
    """The labels and the seen-stroke flags of ``mask`` on the head's grid of ``shape``."""
    return _block_label(mask, stride, shape), _block_label(seen.astype(np.int64), stride, shape)


def _block_label(mask: np.ndarray, stride: int, shape) -> np.ndarray:
    """The label of each ``stride``² block of ``mask`` on the head's grid of ``shape``: its largest
    label (a block holds one class but at a stroke's border), so that a stroke thinner than the
    stride still counts."""
    h, w = shape
    padded = np.zeros((h * stride, w * stride), np.int64)
    mh, mw = min(mask.shape[0], h * stride), min(mask.shape[1], w * stride)
    padded[:mh, :mw] = mask[:mh, :mw]
    return padded.reshape(h, stride, w, stride).max(axis=(1, 3))


def _kept_answers(free, keep, refine=None):
    """The unverified cells (features, logits) where the model is sure (:data:`HEAD_SURE`) of a
    class in ``keep``, with that class: the head learns to leave them be. Strokes are painted where
    the model errs, so a head fitted on them alone repainted tissue the model had right (the demo's
    classes on its own tissue: inflammatory 0.99 -> 0.00 on held-back confirmed pixels).

    ``refine`` maps a kept label to new labels carved out of it (the pathologist's "invasive front"
    out of the model's tumour): there, the model's sure answer is kept as a soft target, 1 −
    :data:`HEAD_CARVED_PRIOR` of that class and the rest shared by the classes carved out of it (the
    fourth item, N×K; None without ``refine``), as the old class did not know the new one — kept as
    itself, it taught the head that the front is tumour (front Dice 0.00 where nobody painted);
    not kept, the head painted the front over all tumour."""
    if free is None or not len(keep):
        return None
    fx, fb = free
    k = fb.shape[1]
    p = torch.softmax(fb.float(), 1)
    conf, label = p.max(1)
    wanted = torch.zeros(k, dtype=torch.bool)
    wanted[[int(c) - 1 for c in keep if 0 < int(c) <= k]] = True
    sure = (conf >= HEAD_SURE) & wanted[label]
    if not bool(sure.any()):
        return None
    label = label[sure]
    target = None
    if refine:
        target = F.one_hot(label, k).float()
        for parent, children in refine.items():
            rows = label == int(parent) - 1
            children = [int(c) - 1 for c in children if 0 < int(c) <= k]
            if children:
                target[rows, int(parent) - 1] = 1 - HEAD_CARVED_PRIOR
                for c in children:
                    target[rows, c] = HEAD_CARVED_PRIOR / len(children)
    return fx[sure], fb[sure], label, target


def carved_from(old_preds, masks, keep: Sequence[int], new_classes: Sequence[int]) -> dict[int, list[int]]:
    """``{kept label: [new labels]}``: the kept classes the old model answered under at least
    :data:`HEAD_CARVED_SHARE` of a new class's verified pixels (the classes it was carved out of)."""
    out: dict[int, list[int]] = {}
    for c in new_classes:
        under = np.concatenate([p[m == c].ravel() for p, m in zip(old_preds, masks)])
        if not under.size:
            continue
        counts = np.bincount(under, minlength=max(keep, default=0) + 1)
        for parent in keep:
            if counts[parent] >= HEAD_CARVED_SHARE * under.size:
                out.setdefault(int(parent), []).append(int(c))
    return out


def _fit(head: PixelHead, data, mean, std, *, steps: int, seed: int, progress=None, cancel=None, offset=0,
         total_steps=None, free=None) -> list[float]:
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
    if free is not None:
        free = ((free[0] - mean) / std, *free[1:])
    with torch_threads(1):
        losses = _steps(head, x, base, y, weight, opt, g, steps, progress, cancel, offset, total_steps, free)
    head.eval()
    return losses


def _steps(head, x, base, y, weight, opt, g, steps, progress, cancel, offset, total_steps, free=None) -> list[float]:
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
        if free is not None:  # the model's sure answers where nothing is verified stay
            fi = torch.randint(0, len(free[2]), (min(HEAD_BATCH, len(free[2])),), generator=g)
            fh = F.gelu(F.linear(free[0][fi], w1.weight[:, :, 0, 0], w1.bias))
            flog = head.base_scale * free[1][fi] + F.linear(fh, w2.weight[:, :, 0, 0], w2.bias)
            if free[3] is None:
                loss = loss + HEAD_KEEP * F.cross_entropy(flog, free[2][fi])
            else:  # soft targets: a class a new one was carved out of
                loss = loss + HEAD_KEEP * F.cross_entropy(flog, free[3][fi])
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
              stride: int = HEAD_STRIDE, context=()):
    """A copy of ``segmenter`` with a fresh pixel head (replacing any it had); the rest shares
    nothing with the input."""
    new = copy.deepcopy(segmenter)
    cfg = new.config.replace(head_sigmas=tuple(float(s) for s in sigmas), head_hidden=int(hidden),
                             head_smooth=float(smooth), head_stride=int(stride),
                             head_context=tuple(float(s) for s in context),
                             context=max(new.config.context, HEAD_CONTEXT))
    model = new.model
    model.config = cfg
    model.head = PixelHead(num_classes=cfg.num_classes, deep_channels=cfg.pixel_dim + cfg.num_classes,
                           sigmas=cfg.head_sigmas, hidden=cfg.head_hidden, smooth=cfg.head_smooth,
                           stride=cfg.head_stride, context=cfg.head_context).to(new.device)
    return new


def fit_head(segmenter, samples, *, steps: int = HEAD_STEPS, folds: int = HEAD_FOLDS, seed: int = 0,
             cache: FeatureCache | None = None, baseline=None, progress=None, cancel=None,
             keep: Sequence[int] = (), new_classes: Sequence[int] = (), **head) -> FinetuneResult:
    """Fit a pixel head on the verified pixels of ``samples`` (see the module docstring).

    Arguments:
      segmenter: the :class:`~napari_dfa.model.Segmenter` to start from (not modified); a head it
        has is replaced by a new one fitted on all of ``samples``.
      samples: ``[(rgb uint8 H×W×3, mask uint8 H×W)]``, mask 0 = not verified.
      steps: optimizer steps of each fit.
      folds: every stroke is held back in one of this many fits (:func:`~.holdout.fold_strokes`)
        and scored by the head fitted without it; a stroke ``segmenter`` was trained on only when
        its head can be refitted without it (a head of this recipe, no class edit between): the
        old model is then scored there by that refit.
      cache: a :class:`FeatureCache` of ``segmenter``'s encoder to fill and reuse.
      baseline / progress / cancel: as :func:`~.finetune.finetune`.
      keep: labels (1..K) whose confident answers the model keeps where nothing is verified (see
        :func:`_kept_answers`); classes the model knows on tissue like its own. Empty: none.
      new_classes: labels (1..K) the model never had. A kept class the old model answers under a
        good share of one's strokes (:data:`HEAD_CARVED_SHARE`) is where the new class was carved
        out of: its sure answers are kept as "it or the new class" (see :func:`_kept_answers`).
      head: ``sigmas``, ``hidden``, ``smooth``, ``stride``, ``context`` of :func:`with_head`
        (``context`` by default: :data:`HEAD_CONTEXT_SIGMAS` with ``new_classes`` or when the
        model's head reads it already, else none).

    Returns: a :class:`~.finetune.FinetuneResult` (``frozen_encoder`` True, ``crop`` 0).
    """
    t0 = time.monotonic()
    k = segmenter.num_classes
    names = list(segmenter.class_names)
    samples = [(r, m) for r, m in _check_samples(samples, k, "correction") if (m > 0).any()]
    corrected = int(sum((m > 0).sum() for _, m in samples))
    if corrected == 0:
        raise DataError("no corrected pixels: paint corrections (labels 1..K) before fine-tuning")
    # A head fitted on earlier strokes (an earlier round): those strokes are evidence too, scored for
    # the old model by its recipe refitted without them. Held back from the new strokes alone, a round
    # on 8 new tiles of a real-pixel mosaic was promoted (held back 0.85 -> 0.95) and was worse on
    # the tiles nobody painted (0.747 -> 0.674).
    seen = trained_strokes(segmenter)
    refit_old = bool(seen) and baseline is None and getattr(segmenter.model, "head", None) is not None
    plan = plan_folds(segmenter, samples, folds, seed, include_seen=refit_old)
    fold_maps = plan.folds
    seen_maps = seen_stroke_maps(samples, k, seen) if refit_old else None
    per_class, held_cls, scored, too_few = plan.per_class, plan.held_per_class, plan.scored, plan.too_few

    if "context" not in head:
        # What lies around a pixel, for a class list of one's own only (new classes, or a head that
        # already reads it): there a class may be defined by its neighbours ("invasive front": 0.01
        # -> 0.75 Dice where nobody painted). In the model's own classes its logits already say what
        # it knows, and the context only gave the head room to fit where one stroke lay (truth-painted
        # strokes on a case slide: held-back necrosis 0.73 -> 0.40, the round rejected).
        old_head = getattr(segmenter.model, "head", None)
        head["context"] = HEAD_CONTEXT_SIGMAS if len(new_classes) or getattr(old_head, "context", ()) else ()
    new = with_head(segmenter, **head)
    model, hd = new.model, new.model.head
    multiple = segmenter.input_multiple
    # The encoder is shared: the old model's features serve the new one (and the caller's guard).
    old_cache = cache if cache is not None and cache.model is segmenter.model else \
        FeatureCache(segmenter.model, multiple=multiple)
    new_cache = FeatureCache(model, multiple=multiple)
    new_cache._cache = old_cache._cache  # same encoder weights: the same features
    model.eval()
    (x, base, y, fold_of), mean, std, windows, free, grid_shapes = _gather(model, hd, new_cache, samples, fold_maps,
                                                                          hd.stride)
    if refit_old:
        # the gathered pixels of strokes the old head trained on (the same grid cells as _gather's)
        seen_of = torch.cat([torch.from_numpy(sgrid[np.nonzero(grid)] > 0)
                             for grid, sgrid in (_grids(m, sm, hd.stride, f_shape)
                                                 for (_, m), sm, f_shape in zip(samples, seen_maps, grid_shapes))])
        old_hd = copy.deepcopy(hd)
    old_preds = (baseline_predictions(baseline, old_cache, [r for r, _ in samples]) if baseline is not None
                 else _predictions(segmenter, old_cache, samples))
    free = _kept_answers(free, keep, carved_from(old_preds, [m for _, m in samples], keep, new_classes))
    used = sorted(int(f) for f in np.unique(np.concatenate([m[m > 0].ravel() for m in fold_maps])))
    total_steps = steps * (len(used) * (2 if refit_old else 1) + 1)
    history = []
    new_scores: dict[str, float] = {}
    old_scores: dict[str, float] = {}
    kept_right: dict = {}
    strokes = None
    if used:
        # Each stroke scored by the head fitted without it: old and new labels over every held-back pixel.
        cm_old = np.zeros((k + 1, k + 1), np.int64)
        cm_new = np.zeros((k + 1, k + 1), np.int64)
        olds, news, helds = [], [], []
        for n, f in enumerate(used):
            keep_f = fold_of != f
            losses = _fit(hd, (x[keep_f], base[keep_f], y[keep_f]), mean, std, steps=steps, seed=seed + n,
                          progress=progress, cancel=cancel, offset=n * steps, total_steps=total_steps, free=free)
            old_fit = False
            if refit_old:  # the old recipe: the strokes the old head had, less this fold
                keep_old = keep_f & seen_of
                old_fit = bool(keep_old.any())
                if old_fit:
                    _fit(old_hd, (x[keep_old], base[keep_old], y[keep_old]), mean, std, steps=steps, seed=seed + n,
                         progress=progress, cancel=cancel, offset=(len(used) + n) * steps, total_steps=total_steps,
                         free=free)
            for w in windows:
                y0, x0, y1, x1 = w.pixels
                fm = fold_maps[w.sample][y0:y1, x0:x1]
                if not (fm == f).any():
                    continue
                held = np.where(fm == f, samples[w.sample][1][y0:y1, x0:x1], 0)
                pred, old = _window_labels(hd, w), old_preds[w.sample][y0:y1, x0:x1]
                if refit_old:  # where the old head trained, its refit without the fold answers
                    seen_w = seen_maps[w.sample][y0:y1, x0:x1]
                    if old_fit:
                        old = np.where(seen_w, _window_labels(old_hd, w), old)
                    else:
                        held = np.where(seen_w, 0, held)
                cm_new += confusion_matrix(pred, held, k)
                cm_old += confusion_matrix(old, held, k)
                olds.append(old)
                news.append(pred)
                helds.append(held)
        old_scores = _per_class_dice(cm_old, names, scored)
        new_scores = _per_class_dice(cm_new, names, scored)
        kept_right = right_kept(olds, news, helds)
        strokes = stroke_counts(olds, news, helds, k)
        history.append({"step": len(used) * steps, "loss": losses[-1], "val_loss": None,
                        "val_score": _mean(new_scores)})
    losses = _fit(hd, (x, base, y), mean, std, steps=steps, seed=seed, progress=progress, cancel=cancel,
                  offset=total_steps - steps, total_steps=total_steps, free=free)
    history.append({"step": total_steps, "loss": losses[-1], "val_loss": None, "val_score": None})
    # What the corrections say was wrong: the old model's labels under every corrected pixel.
    confusion = _confusion(old_preds, [m for _, m in samples], k)
    old_score, new_score = _mean(old_scores), _mean(new_scores)
    promoted = bool(np.isnan(old_score) or new_score >= old_score)
    seconds = time.monotonic() - t0
    new.metadata["provenance"] = correction_provenance(
        segmenter, samples, plan, {"method": "head", "steps": steps, "folds": len(used), "seed": seed,
                                   "old_refit": refit_old, "frozen_encoder": True,
                                   "head": {"sigmas": list(hd.sigmas), "hidden": int(hd.mlp[0].out_channels),
                                            "smooth": hd.smooth, "stride": hd.stride,
                                            "context": list(hd.context)}},
        old_scores, new_scores)
    new.metadata.pop("source", None)
    logger.info("pixel head fitted on %d verified pixels (each of %d held out once, %d folds): score %.4f -> %.4f "
                "in %.1f s", corrected, int(held_cls[1:].sum()), len(used), old_score, new_score, seconds)
    return FinetuneResult(
        segmenter=new, promoted=promoted, old_score=old_score, new_score=new_score, history=history,
        corrected_pixels=corrected, held_out_pixels=int(held_cls[1:].sum()), class_names=names,
        corrected_per_class={names[c - 1]: int(per_class[c]) for c in range(1, k + 1) if per_class[c]},
        held_out_per_class={names[c - 1]: int(held_cls[c]) for c in range(1, k + 1) if held_cls[c]},
        old_class_scores=old_scores, new_class_scores=new_scores, too_few=too_few,
        correction_confusion=confusion, frozen_encoder=True, seconds=seconds, steps=steps, crop=0,
        cache=old_cache, method="head", right_kept=kept_right, strokes=strokes)
