"""Pyramid levels: which level to work at, and which pixels of it a level-0 region covers (no Qt).

One rule each, used by :func:`napari_dfa.inference.segment`, the predict, finetune and demo
commands and the widgets' layer pyramid, so that the CLI and the GUI work at the same level and
crop a level-0 region to the same pixels of it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

logger = logging.getLogger(__name__)

__all__ = ["auto_level", "level_downsample", "nearest_level", "region_to_level"]


def nearest_level(level_mpps: Sequence[float], mpp: float) -> int:
    """Index of the level whose µm/px is closest to ``mpp`` by ratio; ties go to the finer level."""
    errors = [abs(math.log(m / mpp)) for m in level_mpps]
    return min(range(len(errors)), key=lambda i: (round(errors[i], 9), i))


def auto_level(pyramid, model_mpp: float | None) -> int:
    """The level of ``pyramid`` (anything with ``mpp``, µm per level-0 pixel, and ``downsamples``:
    a :class:`~napari_dfa.slide.Slide` or a layer pyramid) nearest the model's µm/px; level 0 when
    either pixel size is unknown."""
    slide_mpp = getattr(pyramid, "mpp", None)
    if not slide_mpp or not model_mpp:
        logger.info("level 'auto': no microns per pixel known for the model or the image; using level 0")
        return 0
    return nearest_level([slide_mpp * float(d) for d in pyramid.downsamples], model_mpp)


def level_downsample(level0_shape: Sequence[int], shape: Sequence[int]) -> float:
    """Level-0 pixels per level pixel, averaged over Y and X (as OpenSlide computes it)."""
    return (level0_shape[0] / shape[0] + level0_shape[1] / shape[1]) / 2.0


def region_to_level(region0, downsample: float, level_shape: Sequence[int],
                    pad: int = 0) -> tuple[int, int, int, int] | None:
    """The level pixels under a level-0 region ``(y0, x0, h, w)`` on a level ``downsample`` times
    smaller, grown by ``pad`` level pixels on each side and clipped to the level's ``(H, W)``;
    None when none of it lies on the level."""
    # Floor the start, ceil the end: the box covers every level-0 pixel asked for (a rounded end
    # dropped the last part-covered level pixel, and a region under one level pixel vanished).
    y0, x0, h, w = (float(v) for v in region0)
    H, W = (int(v) for v in level_shape[:2])
    top = max(0, math.floor(y0 / downsample) - pad)
    left = max(0, math.floor(x0 / downsample) - pad)
    bottom = min(H, math.ceil((y0 + h) / downsample) + pad)
    right = min(W, math.ceil((x0 + w) / downsample) + pad)
    if bottom <= top or right <= left:
        return None
    return (top, left, bottom - top, right - left)
