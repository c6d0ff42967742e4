"""Match a slide's stain to a model's training stain before segmenting it (no Qt).

The slide's stain is fitted once on tissue tiles sampled over the whole level, not over the region
being segmented, so every view of a slide gets the same colours and the same labels
(:mod:`napari_dfa.model.stain` says how the colours are matched).
"""

from __future__ import annotations

import logging

from ..errors import DataError
from ..model.stain import StainFit, StainMatch, training_stain
from ..model.stain_kind import stain_kind
from .domain import sample_tissue_tiles

logger = logging.getLogger(__name__)

TILES = 16  # tissue tiles of 256² sampled over the level: ~1 Mpx, enough for a stable fit


def slide_stain_match(slide_or_array, segmenter, *, level: int = 0, seed: int = 0) -> StainMatch:
    """A :class:`~napari_dfa.model.stain.StainMatch` from the stain of ``slide_or_array`` (a
    :class:`~napari_dfa.slide.Slide` or a Y×X×3 array) at ``level`` to ``segmenter``'s training
    stain. Raises DataError when the model records no training stain, the level shows no tissue,
    or the slide is not H&E (IHC, grey, fluorescence: matching maps one H&E stain to another and
    would only dress another stain up as H&E)."""
    target = training_stain(segmenter)
    tiles = sample_tissue_tiles(slide_or_array, level=level, n=TILES, seed=seed)
    if not tiles:
        raise DataError("no tissue found to fit the slide's stain on; segment without matching the stain")
    kind = stain_kind(tiles)
    if not kind.he:
        trained_on = ((segmenter.metadata or {}).get("domain") or {}).get("trained_on")
        raise DataError(f"Stain matching is not offered for this slide: {kind.message(trained_on)}. "
                        "Segment without matching the stain, and read the labels as a guess")
    source = StainFit.fit(tiles)
    logger.info("stain: slide %s -> training %s", source.as_dict(), target.as_dict())
    return StainMatch(source, target)
