"""Helpers every label writer shares (no Qt): row blocks of any array, class names with colours."""

from __future__ import annotations


from ..arrays import compute_local
from ..classes import default_colors

ROWS = 1024  # rows read at a time from zarr/dask sources


def row_blocks(labels, step: int = ROWS):
    """(y0, block) over full-width row blocks of a numpy/zarr/dask array."""
    for y0 in range(0, labels.shape[0], step):
        block = labels[y0 : y0 + step]
        yield y0, compute_local(block)


def check_classes(class_names, class_colors):
    names = [str(n) for n in class_names]
    colors = [tuple(int(v) for v in c)[:3] for c in (class_colors or [])]
    if len(colors) < len(names):
        colors += default_colors(len(names))[len(colors):]
    return names, colors
