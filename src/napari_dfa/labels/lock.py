"""One writer per labels store (no Qt): :func:`store_lock` over the shared output lock."""

from __future__ import annotations

from ..files.outputs import OutputBusy, OutputLock


class StoreLocked(OutputBusy):
    """Another process is writing the same store."""


class store_lock(OutputLock):  # noqa: N801 - used as a context manager, like open()
    """Keeps two writers off one store: ``with store_lock(path): ...`` (see
    :class:`napari_dfa.files.outputs.OutputLock`: an ``flock`` on ``<store>.lock`` that a killed run
    does not leave held; once held, the leftovers of an interrupted write of the store are cleared)."""

    busy = StoreLocked

    def message(self, holder: str) -> str:
        return (f"{self.path}: another napari-dfa process is writing this store ({holder}); wait for it to "
                "finish or choose another --out")
