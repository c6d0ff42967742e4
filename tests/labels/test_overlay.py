"""The overlay figure of ``napari-dfa demo --headless``: a title (slide, model, date), a scale bar
in µm, a legend with areas, and class colours that never pass for unlabelled H&E, with a
colour-blind-safe choice."""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_dfa import synth
from napari_dfa.commands.demo import nice_scale_bar, write_overlay
from napari_dfa.labels.palette import OKABE_ITO, delta_e, looks_like_he, on_tissue, overlay_palette, simulate_cvd
from napari_dfa.model import load_model
from napari_dfa.slide import open_slide

DEMO_COLORS = [(60, 110, 255), (230, 40, 40), (255, 170, 200), (160, 160, 160), (240, 200, 40)]


@pytest.fixture(scope="module")
def slide_and_labels(tmp_path_factory):
    root = tmp_path_factory.mktemp("overlay")
    path, truth = synth.write_slide(root / "case7.svs", size=(1024, 1536), seed=7, mpp=0.5)
    return path, tifffile.imread(truth).astype(np.uint8)


def _swatches(png: Image.Image, n_classes: int, legend_top: int, row: int) -> list[tuple[int, int, int]]:
    """The fill colour of each legend swatch (its centre pixel)."""
    arr = np.asarray(png.convert("RGB"))
    cx = row // 3 + int(row * 0.35)
    return [tuple(int(v) for v in arr[legend_top + row // 4 + k * row + int(row * 0.35), cx])
            for k in range(n_classes)]


def test_overlay_has_title_scale_bar_legend_with_areas(slide_and_labels, tmp_path):
    path, labels = slide_and_labels
    seg = load_model("demo")
    with open_slide(path) as slide:
        out = write_overlay(tmp_path / "o.png", slide, 0, labels, seg, date="2026-01-02")
    png = Image.open(out)
    W = labels.shape[1]
    row = max(18, W // 50)
    header, legend = row * 2 + row // 2, row * 6 + row // 2  # 2 title lines; 5 classes + "no colour"
    assert png.size == (W, header + labels.shape[0] + legend)

    title = png.text["Title"]
    assert "case7" in title and "napari-dfa demo" in title and "2026-01-02" in title and "0.5 µm/px" in title
    arr = np.asarray(png.convert("RGB")).astype(int)
    assert (arr[:header].sum(axis=2) < 200).sum() > 500  # the title is drawn, dark on white

    # Areas: mm² from the pixel size, share of the labelled tissue.
    counts = np.bincount(labels.ravel(), minlength=6)
    lines = png.text["Description"].splitlines()
    for k, name in enumerate(seg.class_names):
        mm2 = counts[k + 1] * 0.5**2 / 1e6
        share = 100 * counts[k + 1] / counts[1:].sum()
        assert lines[k] == f"{name}  {mm2:.3f} mm², {share:.1f} % of labelled tissue"

    # Scale bar: a black bar of a round length in the bottom-left corner of the image.
    um, px = nice_scale_bar(0.5, W)
    assert um in (100.0, 200.0, 500.0) and px == round(um / 0.5)
    corner = arr[header + labels.shape[0] - 3 * row : header + labels.shape[0], : W // 2]
    black = (corner.max(axis=2) < 30)
    assert black.sum(axis=1).max() == px

    # Legend colours: the default palette swaps the demo's eosin-pink stroma and grey "other".
    swatches = _swatches(png, 5, header + labels.shape[0], row)
    assert swatches == overlay_palette(seg.class_colors)
    assert all(looks_like_he(c) is None for c in swatches)


def test_demo_colours_that_pass_for_he_are_replaced():
    assert looks_like_he(DEMO_COLORS[2]) == "eosin"  # the stroma pink of the demo model
    auto = overlay_palette(DEMO_COLORS)
    assert auto[0] == DEMO_COLORS[0] and auto[1] == DEMO_COLORS[1] and auto[4] == DEMO_COLORS[4]
    assert auto[2] != DEMO_COLORS[2] and auto[3] != DEMO_COLORS[3]
    assert overlay_palette(DEMO_COLORS, "model") == DEMO_COLORS
    for palette in (auto, overlay_palette(DEMO_COLORS, "cb")):
        assert len(set(palette)) == 5 and all(looks_like_he(c) is None for c in palette)


def test_cb_palette_stays_distinct_over_tissue_for_colour_blind_vision():
    cb = overlay_palette(DEMO_COLORS, "cb")
    assert cb == OKABE_ITO[:5]
    for kind in (None, "protan", "deutan", "tritan"):
        seen = [on_tissue(c) if kind is None else simulate_cvd(on_tissue(c), kind) for c in cb]
        assert min(delta_e(a, b) for a, b in itertools.combinations(seen, 2)) > 10, kind


def test_headless_demo_palette_option(tmp_path, tiny_model_path):  # noqa: F811
    exe = shutil.which("napari-dfa")
    cli = [exe] if exe else [sys.executable, "-m", "napari_dfa.cli"]
    proc = subprocess.run([*cli, "demo", "--headless", "--out", str(tmp_path), "--model", str(tiny_model_path),
                           "--level", "2", "--device", "cpu", "--palette", "cb"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = Image.open(next(tmp_path.glob("*_overlay.png")))
    labels = tifffile.imread(next(tmp_path.glob("*_labels.tif")))
    row = max(18, png.width // 50)
    header = row * 2 + row // 2
    assert _swatches(png, 5, header + labels.shape[0], row) == OKABE_ITO[:5]
