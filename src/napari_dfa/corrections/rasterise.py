"""Labelled polygons onto a level's pixel grid (no Qt): the rasteriser of GeoJSON imports.

Pixel-exact: a pixel belongs to a polygon when its centre does (QuPath's and GDAL's rule; a centre
exactly on a left/top edge is inside, on a right/bottom edge outside, so two polygons sharing an
edge paint each pixel once). Each polygon is filled with its own holes by the even-odd rule, so a
hole only leaves out that polygon's paint and never erases polygons drawn before it; later
features paint over earlier ones. Our own GeoJSON export read back gives the labels it came from.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ..errors import DataError

logger = logging.getLogger(__name__)

MAX_PATCH_PIXELS = 1 << 30  # one rasterised patch (uint8): import at a coarser level beyond this
ROW_BAND = 1024  # rows filled at a time (bounds the scanline buffers)


def rasterise_polygons(polygons: list[tuple[int, list]], *, downsample: float = 1.0,
                       level_shape: tuple[int, int] | None = None, source: object = "polygons",
                       class_names=None, notes: list | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Draw labelled polygons (level-0 (x, y) vertices) on the grid of a level.

    Returns ``(mask, (y0, x0))``: uint8 labels over the polygons' bounding box (clipped to the
    level) and its top-left in level pixels. Pixel-centre rule, holes per polygon, later polygons
    over earlier ones; label 0 (QuPath ``Ignore*``) clears. Polygons outside the level are left
    out with a warning; none inside, or none covering a pixel centre, is a DataError. Where
    polygons of two classes overlap, the later wins; with ``notes`` (a list) a line per pair of
    classes says how many pixels were settled so (named by ``class_names`` when given).
    """
    ds = float(downsample)
    if not (math.isfinite(ds) and ds > 0):
        raise DataError(f"{source}: downsample must be a positive number, got {downsample!r}")
    scaled, outside = [], 0
    for label, rings in polygons:
        rings = [np.asarray(r, dtype=np.float64)[:, :2] / ds for r in rings]
        lo, hi = rings[0].min(axis=0), rings[0].max(axis=0)
        if hi[0] <= 0 or hi[1] <= 0 or (level_shape is not None and (lo[0] >= level_shape[1] or lo[1] >= level_shape[0])):
            outside += 1
            continue
        scaled.append((int(label), rings, lo, hi))
    if outside:
        logger.warning("%s: %d polygons lie outside the slide level and were left out", source, outside)
    if not scaled:
        raise DataError(f"{source}: the polygons lie outside the slide")
    lo = np.min([s[2] for s in scaled], axis=0)
    hi = np.max([s[3] for s in scaled], axis=0)
    # Pixels whose centres can fall inside: columns floor(lo - 0.5) + 1 .. ceil(hi - 0.5).
    x0, y0 = max(0, int(math.floor(lo[0]))), max(0, int(math.floor(lo[1])))
    x1, y1 = int(math.ceil(hi[0])), int(math.ceil(hi[1]))
    if level_shape is not None:
        y1, x1 = min(y1, int(level_shape[0])), min(x1, int(level_shape[1]))
    if x1 <= x0 or y1 <= y0:
        raise DataError(f"{source}: the polygons lie outside the slide")
    if (y1 - y0) * (x1 - x0) > MAX_PATCH_PIXELS:
        raise DataError(f"{source}: the polygons span {x1 - x0}×{y1 - y0} pixels at this level (more than "
                        f"{MAX_PATCH_PIXELS >> 20} M); import them at a coarser level")
    mask = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    painted = np.zeros(mask.shape, dtype=bool)
    empty = 0
    overlaps: dict[tuple[int, int], int] = {}
    for label, rings, _, _ in scaled:
        n = fill_polygon(mask, [r - (x0, y0) for r in rings], label, painted, overlaps=overlaps)
        empty += n == 0
    if notes is not None:
        def name(v):
            return str(class_names[v - 1]) if class_names is not None and 0 < v <= len(class_names) else f"label {v}"

        for (was, now), px in sorted(overlaps.items()):
            notes.append(f"{px} px where {name(was)} and {name(now)} annotations overlap: {name(now)} kept "
                         "(the later feature in the file wins)")
    if empty:
        logger.warning("%s: %d polygons cover no pixel centre at this level (smaller than a pixel)", source, empty)
    if not painted.any():
        raise DataError(f"{source}: no pixel centre of this level lies inside the polygons; "
                        "draw larger regions or import at a finer level")
    return mask, (int(y0), int(x0))


def fill_polygon(mask: np.ndarray, rings: list[np.ndarray], value: int, painted: np.ndarray | None = None,
                 overlaps: dict | None = None) -> int:
    """Set the pixels of ``mask`` whose centres lie inside the polygon (exterior + holes, even-odd
    rule) to ``value``; vertices are (x, y) in ``mask``'s pixel units, pixel (r, c) has its centre
    at (c + 0.5, r + 0.5). Returns the number of pixels set. Scanline fill: each edge crosses the
    pixel-centre rows it spans once, so the work is the edges' height plus the area. ``overlaps``
    (a dict) counts the painted pixels of another class this one covers: ``{(old, new): pixels}``."""
    h, w = mask.shape
    xs, ys = [], []
    for ring in rings:
        ring = np.asarray(ring, dtype=np.float64)
        if len(ring) and not np.array_equal(ring[0], ring[-1]):
            ring = np.vstack([ring, ring[:1]])  # GeoJSON rings are closed; be kind to others
        xa, ya, xb, yb = ring[:-1, 0], ring[:-1, 1], ring[1:, 0], ring[1:, 1]
        keep = ya != yb  # horizontal edges cross no centre row
        xs.append(np.stack([xa[keep], xb[keep]]))
        ys.append(np.stack([ya[keep], yb[keep]]))
    if not xs:
        return 0
    xa, xb = np.concatenate([x[0] for x in xs]), np.concatenate([x[1] for x in xs])
    ya, yb = np.concatenate([y[0] for y in ys]), np.concatenate([y[1] for y in ys])
    ylo, yhi = np.minimum(ya, yb), np.maximum(ya, yb)
    # Rows r with centre r + 0.5 in [ylo, yhi): half-open, so a vertex on a row counts once.
    r0 = np.clip(np.ceil(ylo - 0.5), 0, h).astype(np.int64)
    r1 = np.clip(np.ceil(yhi - 0.5), 0, h).astype(np.int64)
    counts = np.maximum(r1 - r0, 0)
    total = int(counts.sum())
    if total == 0:
        return 0
    edge = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    rows = r0[edge] + (np.arange(total) - starts[edge])
    yc = rows + 0.5
    x = xa[edge] + (yc - ya[edge]) * (xb[edge] - xa[edge]) / (yb[edge] - ya[edge])
    order = np.lexsort((x, rows))
    rows, x = rows[order], x[order]
    # Every row holds an even number of crossings (closed rings, half-open rows): pair them up.
    left, right, row = x[0::2], x[1::2], rows[0::2]
    c0 = np.clip(np.ceil(left - 0.5), 0, w).astype(np.int64)
    c1 = np.clip(np.ceil(right - 0.5), 0, w).astype(np.int64)
    keep = c1 > c0
    row, c0, c1 = row[keep], c0[keep], c1[keep]
    if not row.size:
        return 0
    # Work inside the polygon's own box, a band of rows at a time.
    xa0, xa1 = int(c0.min()), int(c1.max())
    bw = xa1 - xa0
    n = 0
    for b0 in range(int(row[0]), int(row[-1]) + 1, ROW_BAND):
        b1 = min(h, b0 + ROW_BAND)
        i0, i1 = np.searchsorted(row, b0), np.searchsorted(row, b1)
        if i0 == i1:
            continue
        diff = np.zeros((b1 - b0, bw + 1), dtype=np.int32)
        np.add.at(diff, (row[i0:i1] - b0, c0[i0:i1] - xa0), 1)
        np.add.at(diff, (row[i0:i1] - b0, c1[i0:i1] - xa0), -1)
        inside = np.cumsum(diff[:, :bw], axis=1) > 0
        if overlaps is not None and painted is not None and value:
            below = mask[b0:b1, xa0:xa1][inside & painted[b0:b1, xa0:xa1]]
            for old, px in zip(*np.unique(below[(below > 0) & (below != value)], return_counts=True)):
                overlaps[(int(old), int(value))] = overlaps.get((int(old), int(value)), 0) + int(px)
        mask[b0:b1, xa0:xa1][inside] = value
        if painted is not None:
            painted[b0:b1, xa0:xa1] |= inside
        n += int(inside.sum())
    return n
