"""Tissue tiles of a slide for the model's "is this slide beyond me?" check (no Qt).

:func:`check_slide` finds tissue on a coarse pyramid level, reads a few tiles at the level the
model segments, and hands them to :func:`napari_dfa.model.domain.domain_check`. ``napari-dfa
predict`` logs its message; the Segment widget can show it.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ..arrays import compute_local

from ..model.domain import TILE, DomainReport, domain_check
from .tissue import tissue_from_rgb

logger = logging.getLogger(__name__)

MASK_SIDE = 1024  # longer side of the low-resolution view the tiles are chosen on


def sample_tissue_tiles(slide, *, level: int = 0, region=None, n: int = 16, size: int = TILE,
                        seed: int = 0) -> list[np.ndarray]:
    """Up to ``n`` tiles (``size``², RGB uint8) centred on tissue, at ``level`` of a
    :class:`~napari_dfa.slide.Slide` (or of a Y×X×3 numpy or dask array, ``level`` ignored), within ``region``
    (y0, x0, h, w in that level's pixels; None = all of it). Deterministic for a seed."""
    if not hasattr(slide, "read_region"):  # a numpy or dask image (another reader's layer)
        arr = slide
        read = lambda lv, box: compute_local(arr[box[0]:box[0] + box[2], box[1]:box[1] + box[3]])  # noqa: E731
        level_shape, downsamples, level = arr.shape[:2], [1.0], 0
    else:
        read = slide.read_region
        level_shape = tuple(slide.levels[level].shape[:2])
        downsamples = slide.downsamples
    y0, x0, h, w = region if region is not None else (0, 0, *level_shape)
    # The coarsest level that still gives a mask of about MASK_SIDE pixels (or this level).
    wanted = max(h, w) / MASK_SIDE
    low = level
    for lv in range(level, len(downsamples)):
        if downsamples[lv] / downsamples[level] <= max(1.0, wanted):
            low = lv
    f = downsamples[low] / downsamples[level]
    ly0, lx0 = int(y0 // f), int(x0 // f)
    view = np.asarray(read(low, (ly0, lx0, max(1, math.ceil(h / f)), max(1, math.ceil(w / f)))))
    step = max(1, int(math.ceil(max(view.shape[:2]) / MASK_SIDE)))  # no coarse level: stride
    mask = tissue_from_rgb(view[::step, ::step])
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return []
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ys))[: 4 * n]
    scale = f * step
    tiles = []
    for i in order:
        cy, cx = y0 + int(ys[i] * scale), x0 + int(xs[i] * scale)
        ty = int(np.clip(cy - size // 2, y0, max(y0, y0 + h - size)))
        tx = int(np.clip(cx - size // 2, x0, max(x0, x0 + w - size)))
        tile = np.asarray(read(level, (ty, tx, min(size, h), min(size, w))))
        if tissue_from_rgb(tile).mean() >= 0.2:
            tiles.append(tile)
        if len(tiles) >= n:
            break
    return tiles


def check_slide(slide, segmenter, *, level: int = 0, region=None, n: int = 16, seed: int = 0) -> DomainReport:
    """:func:`~napari_dfa.model.domain.domain_check` on tissue tiles of ``slide`` at ``level``."""
    tile = int((segmenter.metadata.get("domain") or {}).get("tile", TILE))
    tiles = sample_tissue_tiles(slide, level=level, region=region, n=n, size=tile, seed=seed)
    report = domain_check(segmenter, tiles)
    logger.debug("domain check on %d tiles: %s", len(tiles), report)
    return report
