"""Shared fixtures. GUI tests use napari's own `make_napari_viewer` fixture (Xvfb + Mesa)."""

from __future__ import annotations

import os

import pytest

# Deterministic, and no thread oversubscription on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")

# Property tests draw the same examples on every run, so that CI passes or fails the same way twice
# (a new random draw found an edge case mid-CI once; it is an explicit @example now). Fresh random
# draws: `HYPOTHESIS_PROFILE=explore pytest tests/reliability/`.
try:
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("ci", derandomize=True)
    _hypothesis_settings.register_profile("explore", derandomize=False)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # the test extras bring it; without them those two files cannot run anyway
    pass


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Sample data and caches go to a per-session temp folder, never to the user's home."""
    cache = tmp_path_factory.getbasetemp() / "napari-dfa-cache"
    monkeypatch.setenv("NAPARI_DFA_CACHE", str(cache))
    yield


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, restored after: on the 2 shared CI cores a second thread
    only spins against the other process (and keeps small CPU tests deterministic in speed)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def demo():
    """The bundled demo model, loaded once per test module: modules that change it (precision,
    memory format, classes) do not hand their changes to the next one."""
    from napari_dfa.model import load_model

    return load_model("demo")
