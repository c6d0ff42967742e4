"""Whole-slide inference (no Qt): :func:`segment` (its options grouped in :class:`Tiling` and
:class:`Runtime`) and what it is made of — the tile grid, the blending of tile logits, the tissue
mask, reading a level, and the cache of segmented regions."""

from __future__ import annotations

from .options import Runtime, Tiling
from .segment import OUTPUTS, SegmentResult, model_fingerprint, segment

__all__ = ["OUTPUTS", "Runtime", "SegmentResult", "Tiling", "model_fingerprint", "segment"]
