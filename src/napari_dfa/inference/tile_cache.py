"""Model outputs of lattice tiles already computed, so that panning does not run them again (no Qt).

Tiles sit on a lattice fixed by the level (:mod:`.tiling`), so a view panned by half a view needs
about half its tiles anew: the others were computed for the last view. A cached tile keeps what
any later region needs of it: its labels (argmax) and the logits of the strips its lattice
neighbours share (to blend). Cut out of the same forward pass, a region assembled from cached
tiles gets the labels a fresh run gives.

Entries are keyed by the image (the object itself, kept alive with the entry so that its ``id`` is
not reused), the level, the model's weights (:meth:`~napari_dfa.model.Segmenter.fingerprint`:
a fine-tuned or rolled-back model finds its own tiles), the device and memory format, the tile
shape and the tile's place in the level. The oldest entries go first once ``max_bytes`` is held.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .blend import TileOutput

DEFAULT_BYTES = 256 << 20  # ~40 tiles of 1024² with 5 classes: the views around the last few


def image_key(data) -> tuple:
    """An identity of a slide or image that is stable while it is open: a dask array by its name
    (the same graph gives the same name, as napari layers rebuild theirs), else the object."""
    name = getattr(data, "name", None)
    if type(data).__module__.startswith("dask") and isinstance(name, str):
        return ("dask", name)
    return ("object", id(data))


class TileCache:
    """Outputs of computed lattice tiles, newest last, at most ``max_bytes`` of arrays.

    Thread-safe: ``segment`` looks tiles up before its loop and adds them from its blending
    thread.
    """

    def __init__(self, max_bytes: int = DEFAULT_BYTES):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple, tuple[TileOutput, int, object]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple) -> TileOutput | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: tuple, out: TileOutput, owner=None) -> None:
        """Keep ``out`` (its arrays must not be views of a larger batch: they would keep it alive).
        ``owner``: an object kept alive with the entry (the image whose ``id`` is in the key)."""
        size = _nbytes(out)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (out, size, owner)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped, _) = self._items.popitem(last=False)
                self._bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def _nbytes(out: TileOutput) -> int:
    size = 0 if out.labels is None else out.labels.nbytes
    size += sum(band[-1].nbytes for band in out.bands)
    return size + sum(w.nbytes for w in out.window)
