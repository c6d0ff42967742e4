"""Whole-slide inference (no Qt): :func:`segment` and what it is made of — the tile grid, the
blending of tile logits, the tissue mask, reading a level, and the cache of segmented regions."""

from __future__ import annotations

from .segment import OUTPUTS, SegmentResult, model_fingerprint, segment

__all__ = ["OUTPUTS", "SegmentResult", "model_fingerprint", "segment"]
