"""``napari-dfa demo``: the headless path writes labels and an overlay PNG; without a display the
plain form points to --headless; with one, napari opens on the sample with the three widgets."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image
from widget_helpers import set_canvas, wait_worker

from napari_dfa.classes import SYNTHETIC


def _cli():
    exe = shutil.which("napari-dfa")
    return [exe] if exe else [sys.executable, "-m", "napari_dfa.cli"]


def test_headless_demo_writes_labels_and_overlay(tmp_path, tiny_model_path):
    out = tmp_path / "demo"
    proc = subprocess.run([*_cli(), "demo", "--headless", "--out", str(out), "--model", str(tiny_model_path),
                           "--level", "2", "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tif = next(out.glob("*_labels.tif"))
    labels = tifffile.imread(tif)  # level 0 of the pyramidal TIFF
    from napari_dfa._sample_data import sample_slide_path
    from napari_dfa.slide import open_slide

    with open_slide(sample_slide_path()) as slide:
        assert labels.shape == slide.levels[2].shape[:2]
    assert labels.dtype == np.uint8 and labels.max() <= len(SYNTHETIC.names) and (labels > 0).mean() > 0.3
    # the OME-Zarr store holds the same labels
    store = zarr.open_group(str(next(out.glob("*.labels.zarr"))), mode="r")
    np.testing.assert_array_equal(np.asarray(store["0"][...]), labels)
    # overlay: the slide at that level with a legend strip under it, class colours where labelled
    png = Image.open(next(out.glob("*_overlay.png")))
    assert png.width == labels.shape[1] and png.height > labels.shape[0]
    rows = list(csv.DictReader(open(next(out.glob("*_areas.csv")))))
    assert [r["class"] for r in rows] == list(SYNTHETIC.names)
    assert sum(int(r["pixels"]) for r in rows) == int((labels > 0).sum())
    assert "overlay:" in proc.stdout


def test_demo_without_display_points_to_headless(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.run([*_cli(), "demo"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 1
    assert "no display" in proc.stderr and "napari-dfa demo --headless" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_model_is_one_clear_error(tmp_path):
    proc = subprocess.run([*_cli(), "demo", "--headless", "--out", str(tmp_path), "--model",
                           str(tmp_path / "nope.safetensors")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1
    assert "nope.safetensors" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.gui
def test_demo_viewer_has_sample_model_and_widgets(make_napari_viewer, qtbot, tiny_model_path):
    from napari_dfa._widgets._layers import LayerPyramid, visible_region
    from napari_dfa._widgets._session import session_for
    from napari_dfa.commands.demo import DEMO_VIEW, build_viewer

    viewer = make_napari_viewer(show=True)
    set_canvas(viewer, qtbot)
    widgets = build_viewer(viewer, model=str(tiny_model_path))
    assert set(widgets) == {"Segment", "Attention bias", "Fine-tune"}
    assert [w.__class__.__name__ for w in widgets.values()] == ["SegmentWidget", "AttentionWidget", "FinetuneWidget"]
    image = viewer.layers["synthetic H&E"]
    assert image.multiscale
    assert "synthetic H&E truth" in viewer.layers
    session = session_for(viewer)
    assert session.segmenter is not None and session.segmenter.class_names == list(SYNTHETIC.names)
    assert "Extra attention per class" in widgets["Attention bias"].values.text()
    y0, x0, h, w = visible_region(viewer, LayerPyramid(image))
    # zoomed on a full-resolution view of about DEMO_VIEW² (the docks change the canvas a little)
    assert DEMO_VIEW / 2 <= min(h, w) and max(h, w) <= 2 * DEMO_VIEW
    # Segment the view the demo opens on.
    seg_w = widgets["Segment"]
    seg_w.segment()
    wait_worker(qtbot, seg_w, timeout=600_000)
    assert seg_w.status.text().startswith("Done"), seg_w.status.text()
    assert "tiny · view" in viewer.layers  # model · scope
