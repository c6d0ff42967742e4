"""Band reads: a tile row's neighbouring lattice tiles read from the level as one box (no Qt).

A tile read on its own decodes every stored tile under it, and neighbouring tiles share the stored
tiles under their overlap (and those the tile grid does not align with), so tile-by-tile reads
decode many stored tiles two or three times; one read of a run's box (a band) decodes each once and
costs one dask compute instead of one per tile. Runs stop at skipped tiles (glass is never read) and
after :data:`READ_RUN` tiles, and a band is dropped once its last tile has been taken.
"""

from __future__ import annotations

import threading

import numpy as np

from .reader import LevelReader
from .tiling import TileGrid

# Most neighbouring tiles of a row read as one box.
READ_RUN = 8


class BandReader:
    """Forward-pass tiles of ``grid`` over ``region`` of ``src``, read band by band once
    :meth:`plan` has seen the batches to run (tile by tile before that). Thread-safe: the tiles of
    one band may be asked for from several reader threads."""

    def __init__(self, src: LevelReader, region, grid: TileGrid):
        self.src, self.region, self.grid = src, region, grid
        self._run_of: dict[tuple[int, int], tuple[int, int]] = {}
        self._runs: dict[tuple[int, int], list] = {}  # key -> [lock, band or None, tiles left, js]
        self._runs_lock = threading.Lock()

    def plan(self, batches) -> None:
        """Group each row's tiles in ``batches`` ((row, [columns]) pairs) into runs of neighbours."""
        rows: dict[int, list[int]] = {}
        for i, js in batches:
            rows.setdefault(i, []).extend(js)
        for i, js in rows.items():
            run: list[int] = []
            for j in js + [None]:
                if run and (j is None or j != run[-1] + 1 or len(run) >= READ_RUN):
                    key = (i, run[0])
                    self._runs[key] = [threading.Lock(), None, len(run), run]
                    for jj in run:
                        self._run_of[(i, jj)] = key
                    run = []
                if j is not None:
                    run.append(j)

    def read(self, i: int, j: int) -> np.ndarray:
        """Tile (i, j), padded (mirrored) to the grid's tile shape at the level's edge."""
        th, tw = self.grid.tile_shape
        key = self._run_of.get((i, j))
        if key is None:
            y, x, h, w = self.grid.tile_box(i, j)
            return self.src.read_padded(self.region[0] + y, self.region[1] + x, h, w, th, tw)
        entry = self._runs[key]
        with entry[0]:  # one reader decodes the band; the run's other tiles wait for it
            if entry[1] is None:
                js = entry[3]
                y, x0, h, _ = self.grid.tile_box(i, js[0])
                _, xl, _, wl = self.grid.tile_box(i, js[-1])
                # The stored tiles under a band are decoded by dask's thread pool.
                entry[1] = (x0, self.src.read(self.region[0] + y, self.region[1] + x0, h, xl + wl - x0,
                                              threads=True))
            x0, band = entry[1]
            entry[2] -= 1
            if entry[2] == 0:
                with self._runs_lock:
                    del self._runs[key]
        _, x, h, w = self.grid.tile_box(i, j)
        tile = band[:, x - x0 : x - x0 + w]
        if (h, w) != (th, tw):
            return np.pad(tile, ((0, th - h), (0, tw - w), (0, 0)), mode="symmetric")
        return tile
