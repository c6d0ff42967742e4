"""Compute in the background of an interactive application (no Qt): torch leaves a core to the
UI thread, and what the first segmentation imports is imported before the first click.

The napari widgets call these; a script or the CLI has no UI thread to protect and needs neither.
"""

from __future__ import annotations

import logging
import os

import numpy as np

logger = logging.getLogger(__name__)

GUI_THREADS_ENV = "NAPARI_DFA_GUI_THREADS"

_threads_set = False


def leave_a_core_for_the_ui() -> None:
    """Give torch one core less than the machine has (once per process): with every core busy in
    torch's intra-op pool, the UI thread waits for a CPU and napari stutters (measured in
    benchmarks/bench_gui.py). ``NAPARI_DFA_GUI_THREADS`` overrides the number. The setting is
    process-wide: fine-tuning in the same process gets it too."""
    global _threads_set
    if _threads_set:
        return
    _threads_set = True
    import torch

    want = os.environ.get(GUI_THREADS_ENV)
    n = int(want) if want else max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) - 1))
    if n != torch.get_num_threads():
        logger.info("GUI: torch uses %d thread(s), leaving a core for the UI", n)
        torch.set_num_threads(n)


def gui_tile_workers() -> int:
    """One-thread forward passes the widgets run at once on a CPU: one per core. torch's own pool
    stays a core short (:func:`leave_a_core_for_the_ui`): its threads spin and wait for each
    other. Passes of one thread each do neither; on 2 cores, two at once kept napari's longest
    stall while working at 30-47 ms (40-45 ms with one) and took a 1024² click from 1.6 s to
    1.1-1.2 s (benchmarks/bench_gui.py). Labels do not depend on it. ``NAPARI_DFA_GUI_THREADS``
    caps it as it caps torch's threads."""
    want = os.environ.get(GUI_THREADS_ENV)
    return max(1, int(want) if want else (os.cpu_count() or 1))


def warm_up_inference() -> None:
    """Import and initialise what the first segmentation would otherwise load in its worker: torch,
    the inference modules and the first dask compute (~200 modules). Module initialisation holds
    the GIL, which froze the UI for up to 0.5 s (found with faulthandler in benchmarks/bench_gui.py).
    Meant for a background thread."""
    import dask.array as da
    import torch  # noqa: F401  (napari_dfa.inference itself is imported with this module)

    from .reader import compute_local

    leave_a_core_for_the_ui()
    # As segment computes (a local scheduler function): a plain .compute() would import distributed.
    compute_local(da.from_array(np.zeros((8, 8)), chunks=4).sum(), threads=True)
