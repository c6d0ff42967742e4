"""A pathologist's own class list (no Qt): add, rename, recolour, reorder and remove classes.

:func:`with_classes` returns a copy of a :class:`~napari_dfa.model.Segmenter` whose classes are
exactly the names given. What each class owns in the network is a row of a few per-class tensors
(one class token, its position embedding, δ_c, f_c, …); the image encoder, the FPN, the decoder
layers and the mask head are shared by all classes and are copied unchanged.

- A name the model already has (directly, or through ``renames``) keeps its rows bit for bit: its
  learned token and its learned δ_c.
- A new name gets new rows. Its token starts as the mean of the existing tokens plus small noise,
  not as a copy of one class: the mean sits between the learned classes, so the new class's logit
  is close to the average logit and loses the argmax nearly everywhere — the model does not start
  painting the new class before it is taught — and it favours no existing class. The noise breaks
  the symmetry with that average. When the new class is a subtype of an existing one ("split
  tumour into two grades"), ``init_from={new: existing}`` copies that class's token instead (plus
  the same noise), so fine-tuning only has to separate the two.
- δ of a new class is the model's own warm start: α·(γ·log(1 − f_c) − mean over classes) with f_c
  its share of the corrected pixels (``corrected_frequencies``), exactly as training initialises δ
  from the training-pixel frequencies (see :mod:`napari_dfa.model.bias`); a rare new class gets the
  head start a rare class gets in training.
- Removed names drop their rows.
- f_c is updated: kept classes keep their training frequencies, scaled so that the new classes'
  corrected-pixel shares fit beside them, and the whole vector sums to 1.

Which tensors are per class is found by building the model's shape twice on the meta device (K and
K + 1 classes) and comparing, so a per-class tensor added to the model later is handled too: its
new rows start as the mean of the existing rows.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..classes import check_class_names, default_colors
from ..errors import DataError
from .dfa_model import build_model

logger = logging.getLogger(__name__)

# Noise on a new class token, relative to the spread of the existing tokens (per dimension).
TOKEN_NOISE = 0.1
# The token-like tensors that get the mean-plus-noise start; other per-class tensors get the mean.
_TOKEN_KEYS = ("decoder.class_tokens.weight", "decoder.token_pe.weight")


def per_class_axes(config) -> dict[str, int]:
    """``{state-dict key: class axis}`` of every tensor that holds one row per class.

    Found by building the model with K and K + 1 classes on the meta device (no memory, no
    weights loaded) and comparing shapes."""
    with torch.device("meta"):
        a = build_model(config, load_encoder_weights=False).state_dict()
        b = build_model(config.replace(num_classes=config.num_classes + 1,
                                       difficulty_dice=None if config.difficulty_dice is None
                                       else (*config.difficulty_dice, 0.0)),
                        load_encoder_weights=False).state_dict()
    axes = {}
    for key, t in a.items():
        diff = [i for i, (m, n) in enumerate(zip(t.shape, b[key].shape)) if m != n]
        if diff:
            axes[key] = diff[0]
    return axes


def _resolve_colors(names, colors, old_colors: dict[str, tuple]) -> list[tuple[int, int, int]]:
    """Colours for ``names``: given ones first, then the old colour of a kept class, then a hue
    that no other class of the list uses yet."""
    given: dict[str, tuple] = {}
    if colors is not None:
        if isinstance(colors, Mapping):
            given = {str(k): v for k, v in colors.items()}
            unknown = sorted(set(given) - set(names))
            if unknown:
                raise DataError(f"colours given for classes that are not in the list: {', '.join(unknown)}")
        else:
            colors = list(colors)
            if len(colors) != len(names):
                raise DataError(f"{len(colors)} colours for {len(names)} classes; give one per class or a "
                                "{name: (r, g, b)} mapping")
            given = dict(zip(names, colors))
    out: list[tuple[int, int, int] | None] = []
    for n in names:
        c = given.get(n, old_colors.get(n))
        if c is not None:
            c = tuple(int(v) for v in c)
            if len(c) != 3 or not all(0 <= v <= 255 for v in c):
                raise DataError(f"colour of class {n!r} must be three integers 0..255, got {c}")
        out.append(c)
    # Fresh hues for the rest: the candidate farthest (RGB distance) from the colours in use.
    candidates = default_colors(max(12, 2 * len(names)))
    for i, c in enumerate(out):
        if c is None:
            used = np.array([u for u in out if u is not None] or [(0, 0, 0)], float)
            dist = [np.min(np.linalg.norm(used - np.array(cand, float), axis=1)) for cand in candidates]
            out[i] = candidates[int(np.argmax(dist))]
    return out  # type: ignore[return-value]


def _new_frequencies(names, sources, old_f: np.ndarray, corrected: Mapping[str, float] | None) -> np.ndarray:
    """f_c of the new class list: kept classes keep their share of the training pixels, new classes
    get their share of the corrected pixels (uniform 1/K when not given), and kept shares are scaled
    into what the new ones leave."""
    k = len(names)
    corrected = dict(corrected or {})
    total = float(sum(max(0.0, float(v)) for v in corrected.values()))
    shares = {n: max(0.0, float(v)) / total for n, v in corrected.items()} if total > 0 else {}
    f = np.zeros(k)
    new = [i for i, s in enumerate(sources) if s is None]
    kept = [i for i, s in enumerate(sources) if s is not None]
    if not new and len(kept) == len(old_f):  # a rename or reorder: f_c moves with its class, bit for bit
        return np.asarray([old_f[s] for s in sources], float)
    for i in new:
        f[i] = shares.get(names[i], 1.0 / k)
    f[new] = np.clip(f[new], 1e-4, 0.9)  # log(1 − f) needs f < 1; a class of 100 % gives no prior
    room = max(1e-3, 1.0 - f[new].sum()) if kept else 0.0
    if kept:
        kf = np.array([old_f[sources[i]] for i in kept], float)
        kf = kf / kf.sum() if kf.sum() > 0 else np.full(len(kept), 1.0 / len(kept))
        f[kept] = kf * room
    return f / f.sum()


def with_classes(segmenter, names: Sequence[str], colors=None, *,
                 renames: Mapping[str, str] | None = None,
                 corrected_frequencies: Mapping[str, float] | None = None,
                 init_from: Mapping[str, str] | None = None, seed: int = 0):
    """A copy of ``segmenter`` whose classes are exactly ``names`` (labels 1..len(names) in order).

    Arguments:
      segmenter: the :class:`~napari_dfa.model.Segmenter` to start from (not modified).
      names: the new class list. A name the model has keeps its learned rows (matching ignores
        case); any other name is a new class; a model class not listed (nor renamed) is removed.
      colors: one RGB triple per name, or ``{name: (r, g, b)}`` for some; others keep their old
        colour, and new classes get a hue the list does not use yet.
      renames: ``{old name: new name}``; the class keeps its rows under the new name, which must
        be in ``names``.
      corrected_frequencies: ``{name: corrected pixels (or share)}``; sets f_c and the δ warm start
        of new classes (kept classes keep their learned δ). Missing new classes get 1/K.
      init_from: ``{new name: existing name}``: start the new class's token as a copy of that
        class's (for a subtype of it) instead of the mean of all tokens.
      seed: seeds the noise on new tokens.

    Returns: a new Segmenter on the same device, its ``metadata["provenance"]["classes_edit"]``
    recording the old and new lists; ``bias_history`` is carried over by name (``None`` for a
    class that did not exist yet).
    """
    from .segmenter import Segmenter

    names = check_class_names(names)
    old_names = list(segmenter.class_names)
    lookup = {n.lower(): i for i, n in enumerate(old_names)}
    renames = dict(renames or {})
    for old, new in renames.items():
        if old.lower() not in lookup:
            raise DataError(f"cannot rename {old!r}: the model has no such class "
                            f"(classes: {', '.join(old_names)})")
        if new.lower() not in [n.lower() for n in names]:
            raise DataError(f"rename {old!r} -> {new!r}: {new!r} is not in the new class list {names}")
    target_of = {new.lower(): lookup[old.lower()] for old, new in renames.items()}
    if len(set(target_of.values())) != len(target_of):
        raise DataError(f"two renames point at the same class: {renames}")
    renamed_away = set(target_of.values())
    sources: list[int | None] = []
    for n in names:
        low = n.lower()
        if low in target_of:
            sources.append(target_of[low])
        elif low in lookup and lookup[low] not in renamed_away:
            sources.append(lookup[low])
        else:
            sources.append(None)
    used = [s for s in sources if s is not None]
    if len(set(used)) != len(used):
        raise DataError(f"one model class would feed two new classes: {names} (renames {renames})")
    init_from = dict(init_from or {})
    for new, old in init_from.items():
        if new not in names or sources[names.index(new)] is not None:
            raise DataError(f"init_from {new!r}: only a new class can be initialised from another")
        if old.lower() not in lookup:
            raise DataError(f"init_from {new!r} -> {old!r}: the model has no class {old!r}")

    k_new = len(names)
    old_config = segmenter.config
    dice = old_config.difficulty_dice
    if dice is not None:
        mean_dice = float(np.mean(dice))
        dice = tuple(float(dice[s]) if s is not None else mean_dice for s in sources)
    # A pixel head is fitted for one class list: the new model has none until the next fine-tune
    # fits one (napari_dfa.training.head), which sees the new list's strokes.
    config = old_config.replace(num_classes=k_new, difficulty_dice=dice, head_sigmas=None, head_context=())
    frequencies = _new_frequencies(names, sources, segmenter.frequencies, corrected_frequencies)

    # The new model: shared weights copied, per-class rows gathered from the old model.
    fresh = build_model(config, frequencies=frequencies, load_encoder_weights=False)
    warm = fresh.bias.warm_start_delta().detach().cpu()  # δ warm start for the new list's f_c
    old_state = {k: v.detach().cpu() for k, v in segmenter.model.state_dict().items()}
    new_state = fresh.state_dict()
    axes = per_class_axes(old_config)
    gen = torch.Generator().manual_seed(int(seed))
    state = {}
    for key, target in new_state.items():
        if key not in axes:
            state[key] = old_state[key].clone()
            continue
        axis = axes[key]
        src = old_state[key].movedim(axis, 0)
        rows = []
        for name, s in zip(names, sources):
            if key == "bias.frequencies":
                rows.append(torch.tensor(frequencies[len(rows)], dtype=src.dtype))
            elif s is not None:
                rows.append(src[s].clone())
            elif key == "bias.delta":
                rows.append(warm[len(rows)].to(src.dtype))
            elif key == "bias.difficulty_dice":
                rows.append(torch.tensor(dice[len(rows)] if dice else 0.0, dtype=src.dtype))
            else:
                base = src[lookup[init_from[name].lower()]] if name in init_from else src.mean(0)
                if key in _TOKEN_KEYS and src.shape[0] > 1:
                    noise = torch.randn(base.shape, generator=gen, dtype=torch.float32).to(src.dtype)
                    base = base + TOKEN_NOISE * src.std(0) * noise
                rows.append(base.clone())
        state[key] = torch.stack(rows).movedim(0, axis).contiguous()
        if state[key].shape != target.shape:  # a per-class tensor this function cannot place
            raise DataError(f"cannot rebuild per-class tensor {key}: {tuple(state[key].shape)} != "
                            f"{tuple(target.shape)}")
    fresh.load_state_dict(state, strict=True)

    old_colors = {n: c for n, c in zip(old_names, segmenter.class_colors)}
    carried = {names[i]: old_colors[old_names[s]] for i, s in enumerate(sources) if s is not None}
    class_colors = _resolve_colors(names, colors, carried)

    metadata = copy.deepcopy({k: v for k, v in segmenter.metadata.items() if k != "source"})
    metadata["bias_history"] = [_remap_entry(e, sources) for e in metadata.get("bias_history") or []]
    added = [n for n, s in zip(names, sources) if s is None]
    removed = [n for i, n in enumerate(old_names) if i not in set(used)]
    renamed = {old_names[s]: n for n, s in zip(names, sources) if s is not None and old_names[s] != n}
    parent_prov = metadata.get("provenance") or {}
    metadata["provenance"] = {
        "parent": segmenter.metadata.get("source") or parent_prov.get("parent"),
        "parent_provenance": parent_prov,
        "data": parent_prov.get("data"),
        "classes_edit": {"from": old_names, "to": names, "added": added, "removed": removed,
                         "renamed": renamed, "init_from": init_from,
                         "corrected_frequencies": {k: float(v) for k, v in (corrected_frequencies or {}).items()}},
    }
    out = Segmenter(fresh, class_names=names, class_colors=class_colors, mpp=segmenter.mpp,
                    metadata=metadata, device=segmenter.device)
    logger.info("classes %s -> %s (added %s, removed %s, renamed %s)", old_names, names, added, removed, renamed)
    return out


def _remap_entry(entry, sources):
    """One ``bias_history`` snapshot in the new class order; ``None`` for classes that were new."""
    if not isinstance(entry, dict):
        return entry
    entry = dict(entry)
    for key in ("bias", "b", "delta"):
        vec = entry.get(key)
        if isinstance(vec, list):
            entry[key] = [vec[s] if s is not None and s < len(vec) else None for s in sources]
    return entry
