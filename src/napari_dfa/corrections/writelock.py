"""One writer at a time in a correction store, across processes and threads (no Qt).

Two napari windows on one slide paint into the same store. zarr writes a chunk whole, so two
writers touching one chunk at once each write back what they read before the other's stroke
landed: strokes vanished without an error. Every change to a store runs inside
:func:`write_lock`: an ``flock`` on ``<store>.lock`` (beside it, kept: a lock file that comes and
goes lets two processes lock two files), which a second process waits for (writes take
milliseconds), and which the system releases when its holder dies. Re-entrant within a process
(a store method that calls another), and a thread lock keeps two threads of one process apart.
Without ``fcntl`` (Windows) only the threads of one process are kept apart.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

_registry_lock = threading.Lock()
_locks: dict[str, "_PathLock"] = {}


class _PathLock:
    def __init__(self, file: Path):
        self.file = file
        self.thread = threading.RLock()
        self.depth = 0
        self.fd: int | None = None


def lock_file(store_path) -> Path:
    """``<store>.lock`` beside the store folder."""
    path = Path(store_path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def write_lock(store_path):
    """``with write_lock(store.path): ...``: this process (and thread) is the store's only writer."""
    file = lock_file(store_path)
    key = os.path.realpath(file)
    with _registry_lock:
        lock = _locks.setdefault(key, _PathLock(file))
    with lock.thread:
        if lock.depth == 0:
            lock.fd = _acquire(file)
        lock.depth += 1
        try:
            yield
        finally:
            lock.depth -= 1
            if lock.depth == 0 and lock.fd is not None:
                os.close(lock.fd)  # closing releases the flock
                lock.fd = None


def _acquire(file: Path) -> int | None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: threads only
        return None
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits: the other writer holds it for one stroke
    except BaseException:
        os.close(fd)
        raise
    return fd
