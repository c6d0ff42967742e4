"""A slide named by what it holds (no Qt): the content key that correction stores and labels
stores record, so that a store is never reused for another slide that happens to share a name
or a path, and a moved or renamed slide still finds its own."""

from __future__ import annotations

import numpy as np

from ..arrays import compute_local
from ..files.paths import content_key

KEY_TILE = 512  # side of the level-0 tiles hashed into a slide's content key


def slide_content_key(level0, mpp: float | None) -> str:
    """The content key of a slide from its level-0 pixels (an H×W×3 array, numpy, zarr or dask):
    the top-left and the central :data:`KEY_TILE` tiles, decoded, with the shape and mpp
    (:func:`napari_dfa.files.paths.content_key`). The central tile is there because the top-left one is
    blank glass on most scans."""
    h, w = int(level0.shape[0]), int(level0.shape[1])
    t = KEY_TILE
    cy, cx = max(0, h // 2 - t // 2), max(0, w // 2 - t // 2)
    tiles = []
    for y, x in ((0, 0), (cy, cx)):
        block = compute_local(level0[y:y + t, x:x + t])
        tiles.append(np.ascontiguousarray(block, dtype=np.uint8).tobytes())
    return content_key(tiles, (h, w), mpp)


def key_of_slide(slide) -> str:
    """:func:`slide_content_key` of an open :class:`~napari_dfa.slide.Slide`."""
    return slide_content_key(slide.levels[0], getattr(slide, "mpp", None))
