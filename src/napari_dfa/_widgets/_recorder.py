"""Write-through recording of a correction Labels layer into the on-disk correction store.

napari emits ``Labels.events.paint`` once per committed edit (a brush stroke, a fill, a polygon,
a ``data_setitem``) with the history atoms of that edit; each atom tells which box of the array
changed, so only that box is written. Undo/redo and replacing the data emit no paint event, so
those write the whole (small, single-scale) layer.
"""

from __future__ import annotations

import logging

import numpy as np

from ..corrections import CorrectionStore
from ..errors import DataError

logger = logging.getLogger(__name__)


def atom_block(atom, data) -> tuple[tuple[int, int], np.ndarray] | None:
    """``(offset, block)``: the box of ``data`` a napari history atom touched, with the edit applied.

    napari records the atom (and emits the paint event) *before* it writes the array for single
    edits and after it for strokes, so the edit is applied here from the atom itself; applying it
    twice changes nothing.
    """
    key = getattr(atom, "slice_key", None)
    if key is not None:  # brush, fill, polygon: a box, a mask in it (None = all) and the label
        box = tuple(slice(*s.indices(n)[:2]) for s, n in zip(key[-2:], data.shape[-2:]))
        block = np.array(data[box], copy=True)
        mask = atom.mask
        if mask is None:
            block[...] = atom.new_value
        else:
            block[np.asarray(mask).reshape(block.shape)] = atom.new_value
        return (box[0].start, box[1].start), block
    try:  # data_setitem: (fancy indices, old values, new value(s))
        indices, _old, new = atom
        ys, xs = np.asarray(indices[-2]), np.asarray(indices[-1])
    except (TypeError, ValueError, IndexError):
        return None
    if ys.size == 0:
        return None
    y0, x0 = int(ys.min()), int(xs.min())
    block = np.array(data[y0:int(ys.max()) + 1, x0:int(xs.max()) + 1], copy=True)
    block[ys - y0, xs - x0] = new
    return (y0, x0), block


class CorrectionRecorder:
    """Keeps patch ``patch`` of ``store`` equal to ``layer.data``, edit by edit.

    Arguments:
      layer: a single-scale 2-D napari Labels layer covering the patch (same shape).
      store: the slide's :class:`CorrectionStore`.
      patch: the :class:`~napari_dfa.corrections.CorrectionPatch` the layer shows.
      on_write: called (no arguments) after every write, e.g. to refresh a counter.
    """

    def __init__(self, layer, store: CorrectionStore, patch, *, on_write=None, on_error=None):
        self.layer = layer
        self.store = store
        self.patch = patch
        self.on_write = on_write
        self.on_error = on_error  # called with a message when a stroke cannot be saved
        self.writes = 0
        self.dirty = False  # edits not yet on disk (undo/redo, replaced data)
        layer.events.paint.connect(self._on_paint)
        layer.events.data.connect(self._on_data)
        # Undo/redo change the array without a paint event: wrap them on this layer only.
        self._undo, self._redo = layer.undo, layer.redo
        layer.undo = self._wrap(self._undo)
        layer.redo = self._wrap(self._redo)

    def _wrap(self, fn):
        def run():
            self.dirty = True
            fn()
            self.flush()

        return run

    def _on_paint(self, event) -> None:
        if self.dirty:  # an earlier edit is not on disk yet: write everything, this edit with it
            data = np.array(self.layer.data, copy=True)
            for atom in event.value:  # the array may not hold this edit yet (see atom_block)
                found = atom_block(atom, data)
                if found is not None:
                    (y, x), block = found
                    data[y:y + block.shape[0], x:x + block.shape[1]] = block
            self.flush(data)
            return
        for atom in event.value:
            found = atom_block(atom, self.layer.data)
            if found is None:  # an atom we cannot read: write everything
                self.flush()
                return
            if not self._save(lambda: self.store.write(self.patch.key, *found), found[1]):
                return
            self.writes += 1
        if self.on_write is not None:
            self.on_write()

    def _save(self, write, block) -> bool:
        """Run ``write``; on failure keep the edit on screen, mark it unsaved (the next edit or a
        fine-tune writes it again) and say which class could not be saved, never only a path."""
        try:
            write()
            return True
        except (DataError, OSError) as exc:
            self.dirty = True
            names = self._names()
            values = [int(v) for v in np.unique(np.asarray(block)) if v]
            k = len(self.store.class_names)
            values = [v for v in values if v > k] or values  # name the classes the store lacks
            classes = ", ".join(repr(names.get(v, f"label {v}")) for v in values) or "unlabelled"
            message = (f"A stroke of {classes} was not saved ({exc}). It stays on screen, and is saved with "
                       "the next stroke once the problem is solved.")
            logger.warning(message)
            if self.on_error is not None:
                self.on_error(message)
            return False

    def _names(self) -> dict[int, str]:
        feats = getattr(self.layer, "features", None)
        try:
            return {int(i): str(n) for i, n in zip(feats["index"], feats["class"])}
        except (KeyError, TypeError, ValueError):
            return {}

    def _on_data(self, event=None) -> None:
        self.dirty = True
        if getattr(self.layer.data, "shape", None) == tuple(self.patch.shape):
            self.flush()

    def flush(self, data=None) -> bool:
        """Write the whole layer (after undo/redo, before fine-tuning); False when it could not be."""
        data = np.asarray(self.layer.data if data is None else data)
        if not self._save(lambda: self.store.write(self.patch.key, (0, 0), data), data):
            return False
        self.writes += 1
        self.dirty = False
        if self.on_write is not None:
            self.on_write()
        return True

    def disconnect(self) -> None:
        self.layer.events.paint.disconnect(self._on_paint)
        self.layer.events.data.disconnect(self._on_data)
        self.layer.undo, self.layer.redo = self._undo, self._redo
