"""Helpers every label writer shares (no Qt): row blocks of any array, class names with colours."""

from __future__ import annotations


from ..arrays import compute_local
from ..classes import ClassSet

ROWS = 1024  # rows read at a time from zarr/dask sources
ATTR = "napari_dfa"  # our key in a store's attributes and in a labels TIFF's JSON description


def row_blocks(labels, step: int = ROWS):
    """(y0, block) over full-width row blocks of a numpy/zarr/dask array."""
    for y0 in range(0, labels.shape[0], step):
        block = labels[y0 : y0 + step]
        yield y0, compute_local(block)


def check_classes(classes, class_colors=None):
    """(names, colours) of a ClassSet, or of names with optional colours (writers accept both)."""
    cs = ClassSet.of(classes, class_colors)
    return list(cs.names), list(cs.colors)
