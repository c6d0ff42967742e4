"""Fixtures of the widget tests (napari's own `make_napari_viewer` and pytest-qt's `qtbot` give the
viewer); their helper functions are in widget_helpers.py beside this file."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """The widgets give torch one core less than the machine (for the UI); tests that come after
    these in the same session get the thread count back."""
    import torch

    from napari_dfa.inference import background

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
    background._threads_set = False
