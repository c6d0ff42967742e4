"""Whole-slide images as lazy pyramids (no Qt): :func:`open_slide` and :class:`Slide`.

One module per backend (``_tiff``, ``_zarr``, ``_pil``, ``_openslide``) and the lazy-array helpers
they share (``_arrays``); :mod:`.core` picks the backend and holds :class:`Slide`; :mod:`.levels`
holds the level rule and the level-0 → level region conversion everyone uses.
"""

from __future__ import annotations

from ._arrays import SlideLayoutError, to_rgb_uint8
from .core import BACKENDS, SUFFIXES, Slide, open_slide
from .levels import auto_level, level_downsample, nearest_level, region_to_level

__all__ = ["BACKENDS", "SUFFIXES", "Slide", "SlideLayoutError", "auto_level", "level_downsample", "nearest_level",
           "open_slide", "region_to_level", "to_rgb_uint8"]
