"""The scanline fill under GeoJSON imports (`corrections/rasterise.fill_polygon`), checked pixel by
pixel against a plain per-centre crossing count: what it paints, the count it returns, the painted
map and the overlap counts the import's notes are made of. Polygons reach past every side of the
mask, carry holes and several rings, and have vertices on pixel centres and edges (the half-open
rule's cases); the row bands are made 3 rows high so that a polygon spans many of them."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dfa.corrections import rasterise
from napari_dfa.corrections.rasterise import fill_polygon


def reference_inside(shape, rings) -> np.ndarray:
    """Pixel centres inside by the even-odd rule, counted per centre: an edge crosses the centre's
    row when the row lies in [its lower y, its upper y) and counts when it crosses at or left of the
    centre (so a centre on a left edge is inside, on a right edge outside)."""
    h, w = shape
    yc, xc = np.mgrid[:h, :w] + 0.5
    odd = np.zeros(shape, dtype=bool)
    for ring in rings:
        ring = np.asarray(ring, dtype=np.float64)
        closed = np.vstack([ring, ring[:1]])
        for (xa, ya), (xb, yb) in zip(closed[:-1], closed[1:]):
            if ya == yb:
                continue
            spans = (np.minimum(ya, yb) <= yc) & (yc < np.maximum(ya, yb))
            x = xa + (yc - ya) * (xb - xa) / (yb - ya)
            odd ^= spans & (x <= xc)
    return odd


def random_polygon(rng, shape) -> list[np.ndarray]:
    """1–3 rings (a second ring inside the first is a hole) with vertices on the quarter-pixel grid
    — centres, edges and corners — reaching up to 6 px past each side of the mask."""
    h, w = shape
    rings = []
    for _ in range(rng.integers(1, 4)):
        n = int(rng.integers(3, 9))
        cy, cx = rng.uniform(-4, h + 4), rng.uniform(-4, w + 4)
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(1, max(h, w) * 0.8, n)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)
        pts = np.clip(np.round(pts * 4) / 4, [-6, -6], [w + 6, h + 6])
        rings.append(pts)
    return rings


@pytest.fixture
def thin_bands(monkeypatch):
    monkeypatch.setattr(rasterise, "ROW_BAND", 3)


@pytest.mark.parametrize("seed", range(4))
def test_the_fill_matches_a_per_centre_count_with_its_painted_map_and_overlaps(thin_bands, seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(9, 30)), int(rng.integers(9, 30)))
    mask = np.zeros(shape, np.uint8)
    painted = np.zeros(shape, bool)
    overlaps: dict = {}
    want_mask, want_painted, want_overlaps = mask.copy(), painted.copy(), {}
    for _ in range(12):
        rings = random_polygon(rng, shape)
        value = int(rng.integers(0, 4))  # 0: QuPath's Ignore*, which clears
        inside = reference_inside(shape, rings)
        if value:
            below = want_mask[inside & want_painted]
            for old in np.unique(below[(below > 0) & (below != value)]):
                key = (int(old), value)
                want_overlaps[key] = want_overlaps.get(key, 0) + int((below == old).sum())
        want_mask[inside] = value
        want_painted |= inside

        n = fill_polygon(mask, rings, value, painted, overlaps=overlaps)

        assert n == int(inside.sum())
        np.testing.assert_array_equal(mask, want_mask)
        np.testing.assert_array_equal(painted, want_painted)
        assert overlaps == want_overlaps
        assert all(type(v) is int and v > 0 for v in overlaps.values())
    assert want_overlaps  # the seeds make overlaps to count


def test_a_polygon_taller_than_a_row_band_is_filled_and_counted_once():
    h = 2 * rasterise.ROW_BAND + 300
    rings = [np.array([[1.0, 0.0], [5.0, 0.0], [5.0, h], [1.0, h]])]  # columns 1..4, every row
    mask = np.zeros((h, 8), np.uint8)
    assert fill_polygon(mask, rings, 2) == 4 * h
    assert (mask[:, 1:5] == 2).all() and (mask[:, [0, 5, 6, 7]] == 0).all()


def test_parts_rows_apart_are_all_filled(thin_bands):
    # two rings far apart: the bands between them hold no crossing
    rings = [np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 2.0], [0.0, 2.0]]),
             np.array([[0.0, 20.0], [4.0, 20.0], [4.0, 22.0], [0.0, 22.0]])]
    mask = np.zeros((24, 4), np.uint8)
    assert fill_polygon(mask, rings, 1) == 16
    assert mask[:2].all() and mask[20:22].all() and not mask[2:20].any()


@pytest.mark.parametrize("ring", [
    [[0, 0], [6, 0], [6, 5], [0, 5]],  # an open square
    [[0, 0], [6, 1], [6, 5], [3, 6], [6, 1]],  # open, ending back at its second vertex
    [[0, 0], [6, 1], [6, 5], [0, 0], [0, 5]],  # open, through its first vertex on the way
    [[0, 0], [0, 0], [6, 1], [6, 5], [0, 5]],  # open, its first vertex doubled
], ids=["square", "back-at-second", "through-first", "first-doubled"])
def test_an_open_ring_is_filled_as_its_closed_form(ring):
    ring = np.asarray(ring, dtype=np.float64)
    closed = np.vstack([ring, ring[:1]])
    a, b = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
    assert fill_polygon(a, [ring], 1) == fill_polygon(b, [closed], 1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a == 1, reference_inside(a.shape, [ring]))


def test_unsigned_and_integer_vertices_fill_as_floats():
    # a uint8 difference wraps (0 - 4 = 252): the fill must not work in the caller's dtype
    ring = [[4, 1], [8, 5], [4, 9], [0, 5]]  # a diamond: edges running left and up
    want = np.zeros((10, 9), np.uint8)
    n = fill_polygon(want, [np.asarray(ring, np.float64)], 1)
    np.testing.assert_array_equal(want == 1, reference_inside(want.shape, [ring]))
    for dtype in (np.uint8, np.uint16, np.int32):
        got = np.zeros((10, 9), np.uint8)
        assert fill_polygon(got, [np.asarray(ring, dtype)], 1) == n
        np.testing.assert_array_equal(got, want)


def test_nothing_to_fill_sets_no_pixel_and_returns_zero():
    mask = np.full((6, 6), 3, np.uint8)
    assert fill_polygon(mask, [], 1) == 0
    assert fill_polygon(mask, [np.zeros((0, 2))], 1) == 0  # an empty ring
    assert fill_polygon(mask, [np.array([[0.0, 1.0], [5.0, 1.2], [2.0, 1.4]])], 1) == 0  # between row centres
    assert fill_polygon(mask, [np.array([[1.6, 0.0], [2.4, 0.0], [2.4, 6.0], [1.6, 6.0]])], 1) == 0  # between columns
    assert (mask == 3).all()
    # an empty ring beside a real one is left out
    assert fill_polygon(mask, [np.zeros((0, 2)), np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]])], 1) == 4


def test_painted_and_overlaps_each_work_without_the_other():
    square = [np.array([[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 4.0]])]
    mask = np.full((6, 6), 2, np.uint8)
    painted = np.ones((6, 6), bool)
    assert fill_polygon(mask, square, 1, painted) == 16  # no overlaps dict: nothing to count into
    assert (mask[:4, :4] == 1).all() and painted.all()
    overlaps: dict = {}
    assert fill_polygon(mask, square, 3, overlaps=overlaps) == 16  # no painted map: nothing known painted
    assert overlaps == {} and (mask[:4, :4] == 3).all()
