"""Whole-slide images as lazy pyramids (no Qt): :func:`open_slide` and :class:`Slide`.

One module per backend (``_tiff``, ``_zarr``, ``_pil``, ``_openslide``) and the lazy-array helpers
they share (``_arrays``); :mod:`.core` picks the backend and holds :class:`Slide`.
"""

from __future__ import annotations

from ._arrays import SlideLayoutError
from .core import BACKENDS, SUFFIXES, Slide, nearest_level, open_slide

__all__ = ["BACKENDS", "SUFFIXES", "Slide", "SlideLayoutError", "nearest_level", "open_slide"]
