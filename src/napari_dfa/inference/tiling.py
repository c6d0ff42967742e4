"""Tile grid, blending window and the "cells" that let overlapping tiles finish early.

A region of H×W pixels is covered by tiles of ``tile`` pixels placed every ``tile - overlap``
pixels; the last tile of a row/column is pulled back so that it ends on the region border, so
every forward pass sees a full tile of real pixels. Regions smaller than a tile get one tile
rounded up to the model's input multiple (the read is padded).

Blending: each tile's logits are multiplied by a separable raised-cosine window that ramps over
the overlap on every side that has a neighbour (weight 1 on region borders); neighbouring ramps
are complementary (sin² + cos² = 1), so the blended logits vary smoothly across tile seams.

Cells: the tile starts and ends cut the region into a grid of rectangles ("cells") each covered
by a fixed set of tiles. A cell is final once all its tiles are done, so only the cells under the
tiles in flight hold float accumulators — never a K×H×W canvas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError


def tile_starts(length: int, tile: int, stride: int) -> np.ndarray:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``; the last one ends at
    ``length`` (pulled back), a single 0 when the length fits one tile."""
    if length <= tile:
        return np.zeros(1, dtype=np.int64)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return np.asarray(sorted(set(starts)), dtype=np.int64)


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
    """Tiling of one axis: tile starts, the tile length and the cell boundaries."""

    length: int
    tile: int  # forward-pass size along this axis (>= 1, a multiple of the model input)
    starts: np.ndarray
    bounds: np.ndarray  # sorted cell boundaries, 0 ... length
    cover_first: np.ndarray  # per cell: first tile index covering it
    cover_last: np.ndarray  # per cell: last tile index covering it (inclusive)

    @classmethod
    def build(cls, length: int, tile: int, overlap: int, multiple: int) -> Axis:
        if length <= tile:
            # One tile, rounded up to the model's input multiple; the read is padded.
            tile = max(multiple, int(math.ceil(length / multiple)) * multiple)
        starts = tile_starts(length, tile, tile - overlap)
        ends = np.minimum(starts + tile, length)
        bounds = np.unique(np.concatenate([[0, length], starts, ends]))
        lo, hi = bounds[:-1], bounds[1:]
        # Tile t covers cell [lo, hi) iff starts[t] <= lo and ends[t] >= hi; starts and ends are
        # both increasing, so the covering tiles form a contiguous run.
        first = np.searchsorted(ends, hi, side="left")
        last = np.searchsorted(starts, lo, side="right") - 1
        return cls(length, tile, starts, bounds, first, last)

    def window(self, index: int, overlap: int) -> np.ndarray:
        start = int(self.starts[index])
        return taper(self.tile, overlap, ramp_start=index > 0, ramp_end=start + self.tile < self.length)

    def cells_of(self, index: int) -> range:
        """Indices of the cells inside tile ``index``."""
        start = int(self.starts[index])
        end = min(start + self.tile, self.length)
        a = int(np.searchsorted(self.bounds, start))
        b = int(np.searchsorted(self.bounds, end))
        return range(a, b)


@dataclass(frozen=True)
class TileGrid:
    """Row-major tiles over an H×W region, with their blending windows and cells.

    Arguments:
      height, width: size of the region in pixels.
      tile: tile edge in pixels (a multiple of ``multiple``).
      overlap: pixels shared by neighbouring tiles (0 <= overlap <= tile / 2).
      multiple: the model's input multiple (tiles smaller than ``tile`` are rounded up to it).
    """

    height: int
    width: int
    tile: int
    overlap: int
    multiple: int = 32
    ys: Axis = field(init=False)
    xs: Axis = field(init=False)

    def __post_init__(self):
        if self.height <= 0 or self.width <= 0:
            raise ConfigError(f"cannot tile an empty region of {self.height}×{self.width} pixels")
        if self.tile <= 0 or self.tile % self.multiple:
            raise ConfigError(f"tile={self.tile} must be a positive multiple of the model's input multiple "
                              f"({self.multiple})")
        if not 0 <= 2 * self.overlap <= self.tile:
            raise ConfigError(f"overlap={self.overlap} must be between 0 and half the tile ({self.tile // 2})")
        object.__setattr__(self, "ys", Axis.build(self.height, self.tile, self.overlap, self.multiple))
        object.__setattr__(self, "xs", Axis.build(self.width, self.tile, self.overlap, self.multiple))

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

    def tile_box(self, i: int, j: int) -> tuple[int, int, int, int]:
        """(y, x, h, w) of tile (i, j) clipped to the region (h, w < tile only when padded)."""
        y, x = int(self.ys.starts[i]), int(self.xs.starts[j])
        return y, x, min(self.ys.tile, self.height - y), min(self.xs.tile, self.width - x)

    def window(self, i: int, j: int) -> np.ndarray:
        """Blending weights (tile_h × tile_w float32) of tile (i, j)."""
        return np.outer(self.ys.window(i, self.overlap), self.xs.window(j, self.overlap))

    def cell_counts(self) -> np.ndarray:
        """How many tiles cover each cell (cells_y × cells_x int32)."""
        ny = self.ys.cover_last - self.ys.cover_first + 1
        nx = self.xs.cover_last - self.xs.cover_first + 1
        return np.outer(ny, nx).astype(np.int32)

    def first_row_touching(self, y: int) -> int:
        """Index of the first tile row that reaches below row ``y`` (resume point)."""
        ends = self.ys.starts + self.ys.tile
        return int(np.searchsorted(ends, y, side="right"))
