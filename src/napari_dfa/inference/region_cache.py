"""The last few segmented regions, so that a view inside one of them is not segmented again (no Qt).

Re-clicking Segment, zooming in or panning back to a region segmented a moment ago is answered by
cutting the labels out of that earlier result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

CACHE_SIZE = 4  # region results kept


@dataclass
class CachedRegion:
    """Labels of a region segmented before, answered in place of a
    :class:`~napari_dfa.inference.SegmentResult` (same fields a caller reads)."""

    labels: np.ndarray
    path: None = None
    completed: bool = True
    tiles_done: int = 0
    tiles_total: int = 0
    cached: bool = True


class RegionCache:
    """The last ``size`` region results per (image, level, model); ``image`` is any hashable key
    of the pixels (a path, or a path and how they were recoloured).

    A fine-tuned model is another object, so its results never mix with its parent's.

    Arguments:
      size: how many regions are kept (the oldest is dropped first).
    """

    def __init__(self, size: int = CACHE_SIZE):
        self.size = size
        self.items: list[tuple[tuple, tuple, np.ndarray, object]] = []

    def get(self, image, level: int, seg, region) -> np.ndarray | None:
        """A copy of the labels of ``region`` (y0, x0, h, w at ``level``) when a kept result of the
        same image, level and model covers it, else None."""
        y0, x0, h, w = region
        for key, (cy, cx, ch, cw), labels, _ in self.items:
            if key == (image, level, id(seg)) and cy <= y0 and cx <= x0 and y0 + h <= cy + ch \
                    and x0 + w <= cx + cw:
                return labels[y0 - cy:y0 - cy + h, x0 - cx:x0 - cx + w].copy()
        return None

    def put(self, image, level: int, seg, region, labels: np.ndarray) -> None:
        """Keep the labels of a finished region (newest first)."""
        # the model is kept with its entries so that id(seg) cannot be reused by another model
        self.items = [((image, level, id(seg)), tuple(region), labels, seg), *self.items][: self.size]
