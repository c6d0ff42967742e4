"""Computing lazy arrays in this process (no Qt): the one way every module turns a dask array into numpy."""

from __future__ import annotations

import numpy as np


def compute_local(array, *, threads: bool = False) -> np.ndarray:
    """``array`` as a numpy array; a dask array is computed in this process, never on a cluster.

    The scheduler is handed over as a function: given by name (even ``"sync"``) or not at all,
    dask looks for a ``distributed`` client first, and importing ``distributed`` costs ~0.15 s on
    an idle machine and up to ~10 s under load, on the first read of every process. ``threads``:
    dask's local thread pool (a read of many stored tiles at once); else the calling thread."""
    if not hasattr(array, "compute"):
        return np.asarray(array)
    if threads:
        from dask.threaded import get
    else:
        from dask.local import get_sync as get
    return np.asarray(array.compute(scheduler=get))
