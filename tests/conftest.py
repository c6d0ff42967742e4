"""Shared fixtures. GUI tests use napari's own `make_napari_viewer` fixture (Xvfb + Mesa)."""

from __future__ import annotations

import os

import pytest

# Deterministic, and no thread oversubscription on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Sample data and caches go to a per-session temp folder, never to the user's home."""
    cache = tmp_path_factory.getbasetemp() / "napari-dfa-cache"
    monkeypatch.setenv("NAPARI_DFA_CACHE", str(cache))
    yield
