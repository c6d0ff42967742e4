"""Pixel-exact polygons of label regions (what QuPath draws for a pixel classifier's output).

Boundaries follow pixel edges, so a polygon's area equals its pixel count exactly; pixel
``(row, col)`` is the square ``[col, col + 1] × [row, row + 1]`` (QuPath's convention: the pixel
centre is at ``+0.5``). Steps, per class:

1. 4-connected components (scipy.ndimage.label): pixels touching only at a corner are separate
   polygons, so every polygon's interior is connected (OGC validity);
2. every pixel edge between a component and anything else becomes a directed edge with the
   region on its right on screen (y down), built with numpy for the whole class at once;
3. edges are chained into rings; at a vertex where a component touches itself diagonally the
   walk turns right, staying with the pixel it follows (4-connectivity);
4. a ring that passes a vertex twice is split there, so every ring is simple (a bay closed at a
   corner becomes a hole touching the shell at that corner, which OGC allows); straight runs are
   merged to their corner points;
5. the ring with positive (shoelace) area is the component's shell, negative ones are its holes.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

# Directions on screen: 0 +x, 1 +y, 2 -x, 3 -y. A right turn on screen is dir + 1 (mod 4).
_DX = np.array([1, 0, -1, 0])
_DY = np.array([0, 1, 0, -1])


def _edges(comp: np.ndarray):
    """Directed boundary edges of labelled components (0 = outside): start x, y, dir, comp."""
    p = np.pad(comp, 1)
    core = p[1:-1, 1:-1]
    out = []
    # (neighbour offset, start corner offset (dx, dy) relative to the pixel's top-left, direction)
    for (oy, ox), (sx, sy), d in (((-1, 0), (0, 0), 0),   # top edge, left → right
                                  ((0, 1), (1, 0), 1),    # right edge, top → bottom
                                  ((1, 0), (1, 1), 2),    # bottom edge, right → left
                                  ((0, -1), (0, 1), 3)):  # left edge, bottom → top
        nb = p[1 + oy : p.shape[0] - 1 + oy, 1 + ox : p.shape[1] - 1 + ox]
        r, c = np.nonzero((core != 0) & (nb != core))
        out.append((c + sx, r + sy, np.full(r.shape, d), core[r, c]))
    x, y, d, k = (np.concatenate(v) for v in zip(*out))
    return x.astype(np.int64), y.astype(np.int64), d.astype(np.int64), k.astype(np.int64)


def _chain(x, y, d, k, shape: tuple[int, int]):
    """next[e]: the edge that follows edge e along its ring."""
    n = len(x)
    stride, per_comp = shape[1] + 2, (shape[0] + 2) * (shape[1] + 2)
    # Key of an edge's start vertex within its component; sorted so equal keys are adjacent.
    start_key = k * per_comp + y * stride + x
    order = np.argsort(start_key, kind="stable")
    sorted_keys = start_key[order]
    end_key = k * per_comp + (y + _DY[d]) * stride + (x + _DX[d])
    pos = np.searchsorted(sorted_keys, end_key)
    first = order[pos]
    # Two edges leave a vertex where a component meets itself diagonally: take the right turn.
    nxt = first.copy()
    has_two = (pos + 1 < n) & (np.take(sorted_keys, np.minimum(pos + 1, n - 1)) == end_key)
    if has_two.any():
        second = order[np.minimum(pos + 1, n - 1)]
        want = (d + 1) % 4
        pick_second = has_two & (d[first] != want)
        nxt[pick_second] = second[pick_second]
    return nxt


def _split_simple(ring: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Split a closed ring (first vertex not repeated) at vertices it visits twice."""
    if len(set(ring)) == len(ring):
        return [ring]
    rings, stack, where = [], [], {}
    for v in ring + [ring[0]]:
        if v in where:
            i = where[v]
            sub = stack[i:]
            for u in sub[1:]:
                where.pop(u, None)
            del stack[i + 1 :]
            if len(sub) >= 3:
                rings.append(sub)
        else:
            where[v] = len(stack)
            stack.append(v)
    if len(stack) > 3:  # leftover when the start vertex was not a pinch point
        rings.append(stack[:-1] if stack[-1] == stack[0] else stack)
    return rings


def _corners(ring: list[tuple[int, int]]) -> np.ndarray:
    """Drop vertices in the middle of straight runs; returns an m×2 (x, y) array, not closed."""
    a = np.asarray(ring, dtype=np.int64)
    prev, nxt = np.roll(a, 1, axis=0), np.roll(a, -1, axis=0)
    d1, d2 = a - prev, nxt - a
    cross = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    return a[cross != 0]


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def class_rings(mask: np.ndarray):
    """Rings of the 4-connected regions of a boolean mask.

    Returns: dict component id → (shells, holes), each a list of m×2 int arrays of (x, y)
    corner points (not closed), shells with positive and holes with negative shoelace area."""
    comp, n = ndi.label(mask)
    if n == 0:
        return {}
    x, y, d, k = _edges(comp)
    nxt = _chain(x, y, d, k, mask.shape)
    seen = np.zeros(len(x), dtype=bool)
    out: dict[int, tuple[list, list]] = {}
    xs, ys, ks = x.tolist(), y.tolist(), k.tolist()
    nx = nxt.tolist()
    for e0 in range(len(xs)):
        if seen[e0]:
            continue
        ring, e = [], e0
        while not seen[e]:
            seen[e] = True
            ring.append((xs[e], ys[e]))
            e = nx[e]
        shells, holes = out.setdefault(ks[e0], ([], []))
        for simple in _split_simple(ring):
            pts = _corners(simple)
            if len(pts) < 4:
                continue
            (shells if _area(pts) > 0 else holes).append(pts)
    return out


def mask_to_geometry(mask: np.ndarray, *, scale: float = 1.0, offset=(0.0, 0.0)):
    """shapely (Multi)Polygon of a boolean mask in scaled coordinates (x·scale + ox, y·scale + oy),
    or None when the mask is empty. ``offset`` is (y, x)."""
    import shapely
    from shapely.geometry import MultiPolygon, Polygon

    oy, ox = float(offset[0]), float(offset[1])

    def tr(a):
        return np.column_stack([a[:, 0] * scale + ox, a[:, 1] * scale + oy])

    polys = []
    for shells, holes in class_rings(mask).values():
        if not shells:
            continue
        if len(shells) == 1:
            polys.append(Polygon(tr(shells[0]), [tr(h) for h in holes]))
        else:
            geom = shapely.union_all([Polygon(tr(s)) for s in shells])
            if holes:
                geom = geom.difference(shapely.union_all([Polygon(tr(h)) for h in holes]))
            polys.extend(getattr(geom, "geoms", [geom]))
    if not polys:
        return None
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)
