"""Tile grid, blending window and the "cells" that let overlapping tiles finish early.

**The grid belongs to the level, not to the region.** Tiles sit on a lattice over the whole level
(image): a region is segmented with the lattice tiles that touch it, read whole (real pixels beyond
the region's border, inside the level), and only the region is kept. The DFA decoder's class
tokens attend over the whole forward pass, so a pixel's label depends on the tile it was computed
in; with a lattice fixed by the level, a pixel gets the same tiles — so the same label — whether
the whole slide, a view or a view panned by half a tile is segmented. (Tilings that differ do
differ: measured in ``tests/test_tiling_consistency.py`` and ``benchmarks/bench_inference.py``.)

Lattice along one axis of ``L`` level pixels:

- ``tile=None`` (the default): *fitted* (:func:`fit_axis`). ``n`` tiles of a size near
  :data:`DEFAULT_TILE` (a multiple of the model's input) spread evenly from 0 to ``L`` with at
  least :data:`MIN_OVERLAP` pixels shared by neighbours, chosen so that the lattice computes at most
  :data:`OVERLAP_BUDGET` more pixels than the level has (512-pixel tiles every 448 on 2048 computed
  25 windows for 16 tiles' worth of pixels: +56 %);
- an explicit ``tile`` and ``overlap``: a tile every ``tile - overlap`` pixels from 0, the last
  one pulled back to end at ``L`` (so every forward pass sees a full tile of real pixels);
- ``L`` up to one tile: one tile rounded up to the model's input multiple (the read is padded).

Blending: each tile's logits are weighted by a separable raised-cosine window that ramps over the
overlap on every side with a lattice neighbour (weight 1 on the level border); neighbouring ramps
are complementary (sin² + cos² = 1), so the blended logits vary smoothly across tile seams.

Cells: the tile starts and ends cut the region into a grid of rectangles ("cells") each covered
by a fixed set of tiles. A cell is final once all its tiles are done, so only the cells under the
tiles in flight hold float accumulators — never a K×H×W canvas. A cell covered by one tile needs
no blending at all: its labels are the tile's argmax (computed beside the model, on its device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError

DEFAULT_TILE = 1024  # target forward-pass edge of the fitted lattice (see the module docstring)
MIN_OVERLAP = 32  # pixels neighbouring tiles of the fitted lattice share at least (blended)
OVERLAP_BUDGET = 0.10  # extra computed pixels (by area) the fitted lattice may spend on overlap


def tile_starts(length: int, tile: int, stride: int) -> np.ndarray:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``; the last one ends at
    ``length`` (pulled back), a single 0 when the length fits one tile."""
    if length <= tile:
        return np.zeros(1, dtype=np.int64)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return np.asarray(sorted(set(starts)), dtype=np.int64)


def _ceil_to(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple)) * multiple


def fit_axis(length: int, *, target: int = DEFAULT_TILE, min_overlap: int = MIN_OVERLAP, multiple: int = 32,
             budget: float = OVERLAP_BUDGET) -> tuple[int, np.ndarray]:
    """The fitted lattice of one level axis: (tile, starts).

    Candidates: ``n`` tiles of the smallest multiple of ``multiple`` that covers ``length`` with
    ``min_overlap`` shared between neighbours, spread evenly. Among those whose computed length
    ``n * tile`` exceeds ``length`` by at most the per-axis share of ``budget`` (by area: ``(1 +
    budget) ** 0.5 - 1``), the tile closest to ``target`` (on a tie the larger); if none, one tile,
    which computes the least."""
    one = max(multiple, _ceil_to(length, multiple))
    if length <= _ceil_to(target, multiple):
        return one, np.zeros(1, dtype=np.int64)
    axis_budget = math.sqrt(1.0 + budget) - 1.0
    candidates = [(1, one)]
    for n in range(2, int(math.ceil(2 * length / target)) + 2):
        tile = _ceil_to((length + (n - 1) * min_overlap) / n, multiple)
        if tile < length:
            candidates.append((n, tile))
    within = [c for c in candidates if c[0] * c[1] <= length * (1.0 + axis_budget)]
    # None within: one tile (n tiles compute a multiple of `multiple` of at least `length` pixels,
    # never less than one does).
    n, tile = min(within, key=lambda c: (abs(c[1] - target), c[0])) if within else (1, one)
    if n == 1:
        return tile, np.zeros(1, dtype=np.int64)
    starts = np.round(np.arange(n) * ((length - tile) / (n - 1))).astype(np.int64)
    return tile, starts


def taper(n: int, overlap: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    """1-D raised-cosine window of length ``n``: ramps over ``overlap`` pixels at the ends that
    have a neighbour, 1 elsewhere. Strictly positive, so normalising never divides by zero."""
    w = np.ones(n, dtype=np.float32)
    if overlap <= 0:
        return w
    o = min(overlap, n)
    ramp = np.sin(0.5 * math.pi * (np.arange(o, dtype=np.float64) + 0.5) / o) ** 2
    if ramp_start:
        w[:o] = np.minimum(w[:o], ramp)
    if ramp_end:
        w[n - o :] = np.minimum(w[n - o :], ramp[::-1])
    return w


@dataclass(frozen=True)
class Axis:
    """The lattice tiles of one level axis that touch the region, in region coordinates.

    ``starts`` may be negative (a tile that begins before the region) and a tile may end past
    ``length``; cells only cover the region, ``[0, length)``."""

    length: int  # region length
    tile: int  # forward-pass size along this axis (a multiple of the model input)
    overlap: int  # ramp width: the least overlap of neighbouring lattice tiles (0: none)
    starts: np.ndarray  # per kept tile, region coordinates
    ramp_start: np.ndarray  # per kept tile: a lattice neighbour before it
    ramp_end: np.ndarray  # per kept tile: a lattice neighbour after it
    valid: np.ndarray  # per kept tile: pixels of the tile inside the level (< tile only when padded)
    bounds: np.ndarray  # sorted cell boundaries, 0 ... length
    cover_first: np.ndarray  # per cell: first tile index covering it
    cover_last: np.ndarray  # per cell: last tile index covering it (inclusive)
    lead: np.ndarray  # per kept tile: pixels it shares with its lattice predecessor (0: none)
    trail: np.ndarray  # per kept tile: pixels it shares with its lattice successor (0: none)

    @classmethod
    def build(cls, length: int, tile: int | None, overlap: int | None, multiple: int, *, origin: int = 0,
              extent: int | None = None) -> Axis:
        """The lattice over ``[0, extent)`` (level pixels; default: the region itself) restricted
        to the region ``[origin, origin + length)``. ``tile=None``: fitted (:func:`fit_axis`)."""
        extent = length if extent is None else int(extent)
        if tile is None:
            tile, lattice = fit_axis(extent, multiple=multiple,
                                     min_overlap=MIN_OVERLAP if overlap is None else int(overlap))
        elif extent <= tile:
            # One tile, rounded up to the model's input multiple; the read is padded.
            tile, lattice = max(multiple, _ceil_to(extent, multiple)), np.zeros(1, dtype=np.int64)
        else:
            shared = min(MIN_OVERLAP, tile // 2) if overlap is None else int(overlap)
            lattice = tile_starts(extent, tile, tile - shared)
        ends = lattice + tile
        ramp = int(np.min(ends[:-1] - lattice[1:])) if len(lattice) > 1 else 0
        keep = np.nonzero((lattice < origin + length) & (ends > origin))[0]
        starts = lattice[keep] - origin
        valid = np.minimum(tile, extent - lattice[keep])
        clipped_lo = np.maximum(starts, 0)
        clipped_hi = np.minimum(starts + tile, length)
        bounds = np.unique(np.concatenate([[0, length], clipped_lo, clipped_hi]))
        lo, hi = bounds[:-1], bounds[1:]
        # Tile t covers cell [lo, hi) iff starts[t] <= lo and ends[t] >= hi; starts and ends are
        # both increasing, so the covering tiles form a contiguous run.
        first = np.searchsorted(starts + tile, hi, side="left")
        last = np.searchsorted(starts, lo, side="right") - 1
        n = len(lattice)
        lead = np.where(keep > 0, ends[np.maximum(keep - 1, 0)] - lattice[keep], 0).clip(0, tile)
        trail = np.where(keep < n - 1, ends[keep] - lattice[np.minimum(keep + 1, n - 1)], 0).clip(0, tile)
        return cls(length, int(tile), ramp, starts, keep > 0, keep < n - 1, valid, bounds, first, last,
                   lead, trail)

    def window(self, index: int) -> np.ndarray:
        return taper(self.tile, self.overlap, bool(self.ramp_start[index]), bool(self.ramp_end[index]))

    def cells_of(self, index: int) -> range:
        """Indices of the cells inside tile ``index`` (and the region)."""
        start = int(self.starts[index])
        a = int(np.searchsorted(self.bounds, max(start, 0)))
        b = int(np.searchsorted(self.bounds, min(start + self.tile, self.length)))
        return range(a, b)

    def spans(self, index: int) -> tuple[int, int, int, int]:
        """(kept_lo, only_lo, only_hi, kept_hi) in tile coordinates: the tile's part inside the
        region, and within it the part no other tile covers (empty when only_lo == only_hi)."""
        start = int(self.starts[index])
        cells = self.cells_of(index)
        kept_lo, kept_hi = int(self.bounds[cells.start]) - start, int(self.bounds[cells.stop]) - start
        alone = [c for c in cells if self.cover_first[c] == self.cover_last[c]]
        if not alone:
            return kept_lo, kept_lo, kept_lo, kept_hi
        return kept_lo, int(self.bounds[alone[0]]) - start, int(self.bounds[alone[-1] + 1]) - start, kept_hi


def _pair(value, name: str) -> tuple:
    if value is None or isinstance(value, (int, np.integer)):
        return value, value
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r}: give one number or a (y, x) pair") from None
    return a, b


@dataclass(frozen=True)
class TileGrid:
    """Row-major lattice tiles over an H×W region of a level, with their windows and cells.

    Arguments:
      height, width: size of the region in pixels.
      tile: tile edge in pixels (a multiple of ``multiple``; a (y, x) pair is taken too), or None
        for the fitted lattice (the default of :func:`napari_dfa.inference.segment`).
      overlap: pixels shared by neighbouring tiles (0 <= overlap <= tile / 2; None:
        :data:`MIN_OVERLAP`); with ``tile=None``, the least overlap of the fitted lattice.
      multiple: the model's input multiple (tiles smaller than ``tile`` are rounded up to it).
      origin: (y0, x0) of the region in the level.
      extent: (H, W) of the level the lattice spans; None: the region is the whole level.
    """

    height: int
    width: int
    tile: int | tuple | None = None
    overlap: int | tuple | None = None
    multiple: int = 32
    origin: tuple[int, int] = (0, 0)
    extent: tuple[int, int] | None = None
    ys: Axis = field(init=False)
    xs: Axis = field(init=False)

    def __post_init__(self):
        if self.height <= 0 or self.width <= 0:
            raise ConfigError(f"cannot tile an empty region of {self.height}×{self.width} pixels")
        tiles, overlaps = _pair(self.tile, "tile"), _pair(self.overlap, "overlap")
        for t, o in zip(tiles, overlaps):
            if t is not None and (t <= 0 or t % self.multiple):
                raise ConfigError(f"tile={self.tile} must be a positive multiple of the model's input multiple "
                                  f"({self.multiple})")
            if t is not None and not 0 <= 2 * (o or 0) <= t:
                raise ConfigError(f"overlap={self.overlap} must be between 0 and half the tile ({t // 2})")
            if t is None and o is not None and o < 0:
                raise ConfigError(f"overlap={self.overlap} must not be negative")
        extent = self.extent or (self.height, self.width)
        oy, ox = (int(v) for v in self.origin)
        if oy < 0 or ox < 0 or oy + self.height > extent[0] or ox + self.width > extent[1]:
            raise ConfigError(f"region {(oy, ox, self.height, self.width)} lies outside the level {tuple(extent)}")
        object.__setattr__(self, "ys", Axis.build(self.height, tiles[0], overlaps[0], self.multiple, origin=oy,
                                                  extent=int(extent[0])))
        object.__setattr__(self, "xs", Axis.build(self.width, tiles[1], overlaps[1], self.multiple, origin=ox,
                                                  extent=int(extent[1])))

    @property
    def rows(self) -> int:
        return len(self.ys.starts)

    @property
    def cols(self) -> int:
        return len(self.xs.starts)

    @property
    def total(self) -> int:
        return self.rows * self.cols

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.ys.tile, self.xs.tile

    @property
    def overlaps(self) -> tuple[int, int]:
        """Ramp widths (the least overlap of neighbouring tiles) along y and x."""
        return self.ys.overlap, self.xs.overlap

    @property
    def computed_pixels(self) -> int:
        """Pixels the forward passes see (tiles × tile area): compare with the region's area."""
        return self.total * self.ys.tile * self.xs.tile

    def tile_box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """(y, x, h, w) of tile (i, j) in region coordinates (y, x may be negative: the tile starts
        before the region); h, w < the tile only where the level ends (the read is padded)."""
        return (int(self.ys.starts[i]), int(self.xs.starts[j]), int(self.ys.valid[i]), int(self.xs.valid[j]))

    def box(self) -> tuple[int, int, int, int]:
        """(y, x, h, w) in region coordinates of everything the tiles read (inside the level)."""
        y0, x0 = int(self.ys.starts[0]), int(self.xs.starts[0])
        y1 = int(self.ys.starts[-1] + self.ys.valid[-1])
        x1 = int(self.xs.starts[-1] + self.xs.valid[-1])
        return y0, x0, y1 - y0, x1 - x0

    def window(self, i: int, j: int) -> np.ndarray:
        """Blending weights (tile_h × tile_w float32) of tile (i, j)."""
        return np.outer(self.ys.window(i), self.xs.window(j))

    def cell_counts(self) -> np.ndarray:
        """How many tiles cover each cell (cells_y × cells_x int32)."""
        ny = self.ys.cover_last - self.ys.cover_first + 1
        nx = self.xs.cover_last - self.xs.cover_first + 1
        return np.outer(ny, nx).astype(np.int32)

    def shared_bands(self, i: int, j: int) -> list[tuple[int, int, int, int]]:
        """Boxes (y0, y1, x0, x1, tile coordinates) of tile (i, j) inside the region that other
        tiles cover too — the only pixels whose logits need blending; the rest (the tile's own
        cells) takes the tile's argmax. Each shared cell lies inside one box."""
        ky0, ay0, ay1, ky1 = self.ys.spans(i)
        kx0, ax0, ax1, kx1 = self.xs.spans(j)
        if ay0 == ay1 or ax0 == ax1:  # no cell of its own: the whole kept part is shared
            return [(ky0, ky1, kx0, kx1)]
        bands = [(ky0, ay0, kx0, kx1), (ay1, ky1, kx0, kx1), (ay0, ay1, kx0, ax0), (ay0, ay1, ax1, kx1)]
        return [b for b in bands if b[0] < b[1] and b[2] < b[3]]

    def lattice_strips(self, i: int, j: int) -> list[tuple[int, int, int, int]]:
        """Boxes (y0, y1, x0, x1, tile coordinates) of tile (i, j) that its *lattice* neighbours
        share, whatever the region: top, bottom, left and right strips across the whole tile. Every
        box of :meth:`shared_bands`, of any region, lies inside one of them, so a tile's labels and
        these strips are all a later region needs of it (:mod:`napari_dfa.inference.tile_cache`)."""
        th, tw = self.tile_shape
        top, bottom = int(self.ys.lead[i]), int(self.ys.trail[i])
        left, right = int(self.xs.lead[j]), int(self.xs.trail[j])
        strips = [(0, top, 0, tw), (th - bottom, th, 0, tw), (0, th, 0, left), (0, th, tw - right, tw)]
        return [b for b in strips if b[0] < b[1] and b[2] < b[3]]

    def first_row_touching(self, y: int) -> int:
        """Index of the first tile row that reaches below row ``y`` (resume point)."""
        ends = self.ys.starts + self.ys.tile
        return int(np.searchsorted(ends, y, side="right"))
