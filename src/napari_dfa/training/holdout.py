"""The verified pixels held back to judge a fine-tune, by whole stroke (no Qt, no torch).

A stroke is an 8-connected piece of one class in a correction mask. Scores are only honest on
strokes the scored model never trained on, so everything here works by whole stroke: one split
(:func:`split_holdout_by_stroke`) for the deep fine-tune, folds (:func:`fold_strokes`) for the pixel
head's cross-validation, the signatures a model records of the strokes it was trained on
(:func:`stroke_signature`) so that the next run never holds those back, and the per-stroke counts
the guard resamples (:func:`stroke_counts`, :func:`right_kept`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A class needs at least this many held-out pixels to be scored: below it, one block more or less
# swings its Dice by more than any real difference between two models.
MIN_HELD_OUT_PIXELS = 100


def stroke_signature(rgb: np.ndarray, stroke: np.ndarray, label: int) -> str:
    """A stroke's identity, whatever crop it was read in: a hash of its class, its shape and the
    pixels under it. A model records those it was trained on (provenance ``finetune.strokes``)."""
    import hashlib

    ys, xs = np.nonzero(stroke)
    h = hashlib.blake2b(digest_size=8)
    h.update(np.array([label, ys.max() - ys.min(), xs.max() - xs.min(), ys.size], np.int64).tobytes())
    h.update(np.ascontiguousarray(rgb[ys, xs]).tobytes())
    return h.hexdigest()


def trained_strokes(segmenter) -> set[str]:
    """Signatures of the strokes ``segmenter`` was fine-tuned on (its provenance), if any."""
    prov = (segmenter.metadata.get("provenance") or {}).get("finetune") or {}
    return {str(v) for v in prov.get("strokes") or []}


def seen_stroke_maps(samples, num_classes: int, seen: set[str]) -> list[np.ndarray]:
    """Per sample, a bool map of the strokes whose signature is in ``seen`` (those a model was
    trained on)."""
    from scipy import ndimage

    out = []
    for rgb, m in samples:
        hit = np.zeros(m.shape, bool)
        for c in range(1, num_classes + 1):
            lab, n = ndimage.label(m == c, structure=np.ones((3, 3), bool))
            for j in range(1, n + 1):
                if stroke_signature(rgb, lab == j, c) in seen:
                    hit |= lab == j
        out.append(hit)
    return out


def all_stroke_signatures(samples, num_classes: int) -> list[str]:
    """The signatures of every stroke of ``samples`` (to record what a model was trained on)."""
    from scipy import ndimage

    out = []
    for rgb, m in samples:
        for c in range(1, num_classes + 1):
            lab, n = ndimage.label(m == c, structure=np.ones((3, 3), bool))
            out += [stroke_signature(rgb, lab == j, c) for j in range(1, n + 1)]
    return sorted(set(out))


def split_holdout_by_stroke(masks: list[np.ndarray], num_classes: int, fraction: float,
                            rng: np.random.Generator, *, images: list[np.ndarray] | None = None,
                            seen: set[str] | frozenset = frozenset()) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(train mask, held-out mask)]`` per mask, held out by whole strokes: a stroke is a connected
    region of one class (8-connected; touching strokes of a class are one, as are a QuPath
    annotation and a confirmed region's part of that class), so no stroke sits on both sides and a
    held-out pixel never has a trained neighbour of the same stroke.

    Per class, pooled over all masks, random strokes are held out until a ``fraction`` of them and
    at least :data:`MIN_HELD_OUT_PIXELS` pixels are, never more than half of the class's pixels
    (unless strokes the old model saw keep training it) and never all its strokes. A class with one stroke is not held
    out: the caller reports it as too few.

    ``seen``: signatures (:func:`stroke_signature`, of the strokes in ``images``) of strokes the
    model being compared against was trained on. They are never held back: the old model would be
    scored on its own training strokes (it won on them, and a better new model was rejected)."""
    from scipy import ndimage

    eight = np.ones((3, 3), bool)
    comps = []  # per mask: (component labels, count) per class
    for m in masks:
        comps.append({c: ndimage.label(m == c, structure=eight) for c in range(1, num_classes + 1)})
    held = [np.zeros(m.shape, bool) for m in masks]
    if fraction > 0:
        for c in range(1, num_classes + 1):
            strokes = [(i, j, int((comps[i][c][0] == j).sum())) for i in range(len(masks))
                       for j in range(1, comps[i][c][1] + 1)
                       if not seen or images is None
                       or stroke_signature(images[i], comps[i][c][0] == j, c) not in seen]
            n = len(strokes)
            total_strokes = sum(comps[i][c][1] for i in range(len(masks)))
            if n < 1 or total_strokes < 2:
                continue
            total = int(sum((m == c).sum() for m in masks))
            seen_px = total - sum(px for _, _, px in strokes)
            want = max(1, int(round(fraction * n)))
            taken = got = 0
            for t in rng.permutation(n):
                if taken >= min(n, total_strokes - 1) or (taken >= want and got >= MIN_HELD_OUT_PIXELS):
                    break
                i, j, px = strokes[int(t)]
                # Most of a class stays to train on, unless strokes the old model saw train it anyway.
                if got + px > total / 2 and not (taken == 0 and seen_px > 0):
                    continue
                held[i] |= comps[i][c][0] == j
                taken += 1
                got += px
    return [(np.where(h, 0, m).astype(np.uint8), np.where(h, m, 0).astype(np.uint8)) for m, h in zip(masks, held)]


def fold_strokes(masks: list[np.ndarray], num_classes: int, folds: int, rng: np.random.Generator, *,
                 images: list[np.ndarray] | None = None, seen: set[str] | frozenset = frozenset()) -> list[np.ndarray]:
    """Every stroke held back once: per mask an int map, 0 where nothing is held back (unlabelled,
    or a stroke that trains in every fold) and ``f`` (1..``folds``) on the strokes held back in
    fold ``f`` — whole strokes, as :func:`split_holdout_by_stroke` defines them.

    Per class, its strokes go round the folds in random order, so every fold leaves at least one
    stroke of the class to train on; a class with a single stroke is never held back (the caller
    reports it as too few), and neither is a stroke in ``seen`` (the compared model trained on it).
    Scoring each stroke by a model fitted without it uses every verified pixel as evidence, where
    one split held back one or two strokes a class and its verdict flipped with the seed (issue 21)."""
    from scipy import ndimage

    eight = np.ones((3, 3), bool)
    out = [np.zeros(m.shape, np.int8) for m in masks]
    for c in range(1, num_classes + 1):
        comps = [ndimage.label(m == c, structure=eight) for m in masks]
        total = sum(n for _, n in comps)
        strokes = [(i, j) for i, (lab, n) in enumerate(comps) for j in range(1, n + 1)
                   if not seen or images is None or stroke_signature(images[i], lab == j, c) not in seen]
        if total < 2 or not strokes:
            continue
        start = int(rng.integers(folds))
        for t, s in enumerate(rng.permutation(len(strokes))):
            i, j = strokes[int(s)]
            out[i][comps[i][0] == j] = (start + t) % min(folds, total) + 1
    return out


def right_kept(old_preds, new_preds, masks) -> dict[int, tuple[int, int, int]]:
    """Per label, (held-back verified pixels the old model labelled right, how many of them the new
    one still does, how many of the label's held-back verified pixels the new one labels right in
    all): what a regression where the pathologist said the old model was right looks like, and
    whether the new model made up for it elsewhere in the class."""
    out: dict[int, list[int]] = {}
    for old, new, mask in zip(old_preds, new_preds, masks):
        ok = (mask > 0) & (old == mask)
        now = (mask > 0) & (new == mask)
        for c in np.unique(mask[ok]).tolist():
            here = ok & (mask == c)
            r = out.setdefault(int(c), [0, 0, 0])
            r[0] += int(here.sum())
            r[1] += int((here & (new == mask)).sum())
            r[2] += int((now & (mask == c)).sum())
    return {c: tuple(r) for c, r in out.items()}


def stroke_counts(old_preds, new_preds, masks, k: int) -> tuple[np.ndarray, ...]:
    """Per held-back stroke (an 8-connected piece of one class in a mask): its label, and the old
    and the new model's labels over it counted (n × (k+1) each). Summed over any set of strokes
    they give the confusion rows the per-class Dice comes from, so the guard can ask whether a
    class's drop holds across its strokes or rests on one or two of them."""
    from scipy import ndimage

    eight = np.ones((3, 3), bool)
    classes, olds, news = [], [], []
    for old, new, mask in zip(old_preds, new_preds, masks):
        for c in np.unique(mask[mask > 0]).tolist():
            lab, n = ndimage.label(mask == c, structure=eight)
            for j in range(1, n + 1):
                piece = lab == j
                classes.append(int(c))
                olds.append(np.bincount(np.clip(old[piece], 0, k), minlength=k + 1)[:k + 1])
                news.append(np.bincount(np.clip(new[piece], 0, k), minlength=k + 1)[:k + 1])
    empty = np.zeros((0, k + 1), np.int64)
    return (np.asarray(classes, np.int64), np.asarray(olds, np.int64) if olds else empty,
            np.asarray(news, np.int64) if news else empty)


@dataclass
class HoldOut:
    """The strokes held back to score old and new models (:func:`plan_holdout`).

    Attributes: ``splits`` ``[(train mask, held-out mask)]`` per sample; ``per_class`` and
    ``held_per_class`` pixel counts by label (index 0 unused); ``scored`` the class names with at
    least :data:`MIN_HELD_OUT_PIXELS` held back; ``too_few`` ``{name: held-back px}`` of the other
    corrected classes."""

    splits: list
    per_class: np.ndarray
    held_per_class: np.ndarray
    scored: list
    too_few: dict
    folds: list | None = None  # per sample, the fold each stroke is held back in (fold_strokes)


def _rng(seed: int) -> np.random.Generator:
    """The hold-out's own stream: the same seed holds back the same strokes for every method."""
    return np.random.default_rng(np.random.SeedSequence([seed, 7919]))


def _plan(names, samples, splits, folds=None) -> HoldOut:
    """The :class:`HoldOut` of ``splits``: pixels per class, held back per class, what can be scored."""
    k = len(names)
    per_class = np.bincount(np.concatenate([m.ravel() for _, m in samples]), minlength=k + 1)
    held = np.zeros(k + 1, np.int64)
    for _, va in splits:
        held += np.bincount(va.ravel(), minlength=k + 1)
    scored = [names[c - 1] for c in range(1, k + 1) if held[c] >= MIN_HELD_OUT_PIXELS]
    too_few = {names[c - 1]: int(held[c]) for c in range(1, k + 1) if per_class[c] > 0 and held[c] < MIN_HELD_OUT_PIXELS}
    return HoldOut(splits, per_class, held, scored, too_few, folds=folds)


def plan_holdout(segmenter, samples, val_fraction: float, seed: int) -> HoldOut:
    """Whole strokes of ``samples`` held back per class (:func:`split_holdout_by_stroke`), never
    those ``segmenter`` was trained on; the same seed holds back the same strokes for every method."""
    k, names = segmenter.num_classes, list(segmenter.class_names)
    rng = _rng(seed)
    splits = split_holdout_by_stroke([m for _, m in samples], k, val_fraction, rng,
                                     images=[r for r, _ in samples], seen=trained_strokes(segmenter))
    return _plan(names, samples, splits)


def plan_folds(segmenter, samples, folds: int, seed: int, *, include_seen: bool = False) -> HoldOut:
    """Every stroke of ``samples`` held back in one of ``folds`` folds (:func:`fold_strokes`), never
    those ``segmenter`` was trained on unless ``include_seen`` (the caller then scores the old
    model there by refitting it without them). ``held_per_class`` counts each held-back pixel once."""
    k, names = segmenter.num_classes, list(segmenter.class_names)
    rng = _rng(seed)
    fold_maps = fold_strokes([m for _, m in samples], k, folds, rng, images=[r for r, _ in samples],
                             seen=frozenset() if include_seen else trained_strokes(segmenter))
    splits = [(np.where(f > 0, 0, m).astype(np.uint8), np.where(f > 0, m, 0).astype(np.uint8))
              for (_, m), f in zip(samples, fold_maps)]
    return _plan(names, samples, splits, fold_maps)
