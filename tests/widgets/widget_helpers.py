"""Fixtures shared by the widget tests: a real slide file, a small real model, a docked viewer.

Imported by tests/widgets/test_widgets_*.py and tests/widgets/test_demo.py (``from widget_fixtures import *``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from napari_dfa.classes import SYNTHETIC


@pytest.fixture(scope="session")
def small_slide(tmp_path_factory) -> Path:
    """A 2048² three-level synthetic OME-TIFF (0.5 µm/px) with its truth, written once."""
    from napari_dfa import synth

    folder = tmp_path_factory.mktemp("slides")
    slide, _truth = synth.write_slide(folder / "small.ome.tif", size=(2048, 2048), seed=3, mpp=0.5)
    return Path(slide)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """An untrained ``tiny`` Segmenter with the synthetic classes, trained at 0.5 µm/px."""
    import torch

    from napari_dfa.model import ModelConfig, Segmenter

    torch.manual_seed(0)
    seg = Segmenter.from_config(ModelConfig.from_preset("tiny", num_classes=5), class_names=SYNTHETIC.names,
                                class_colors=SYNTHETIC.colors, frequencies=[0.4, 0.3, 0.15, 0.1, 0.05],
                                mpp=0.5)
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    seg.save(path, provenance={"data": "untrained test model"})
    return path


def open_slide_layer(viewer, path):
    """Open a slide through our reader, as a user would (File > Open, plugin napari-dfa)."""
    layers = viewer.open(str(path), plugin="napari-dfa")
    assert len(layers) == 1
    return layers[0]


def view_region(viewer, layer, y0, x0, h, w):
    """Point the camera at a level-0 region (y0, x0, h, w) of ``layer`` so it fills the canvas."""
    sy, sx = layer.scale[-2:]
    ty, tx = layer.translate[-2:]
    ch, cw = viewer.canvas.size
    viewer.camera.center = (ty + (y0 + h / 2) * sy, tx + (x0 + w / 2) * sx)
    viewer.camera.zoom = min(ch / (h * sy), cw / (w * sx))


def wait_worker(qtbot, widget, timeout=600_000):
    """Wait until the widget's thread worker has finished and its callbacks ran."""
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)
    qtbot.wait(20)


def set_canvas(viewer, qtbot, size=(800, 800)):
    """A canvas of a known size, whatever the docks around it take."""
    viewer.window._qt_window.resize(1500, 1000)
    viewer.canvas.size = size
    qtbot.wait(50)


def world_to_level0(layer, world_yx):
    return (np.asarray(world_yx, float) - np.asarray(layer.translate[-2:])) / np.asarray(layer.scale[-2:])


def tick(qtbot, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        qtbot.wait(10)


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
