"""Segment widget with a real napari viewer (Xvfb): visible region, whole slide, ROI, any image
layer, cancel, bad states."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from widget_helpers import open_slide_layer, set_canvas, view_region, wait_worker

from napari_dfa.classes import SYNTHETIC
from napari_dfa.inference import segment
from napari_dfa.model import load_model

pytestmark = pytest.mark.gui


@pytest.fixture
def setup(make_napari_viewer, qtbot, small_slide, tiny_model_path):
    from napari_dfa._widgets.segment import SegmentWidget

    viewer = make_napari_viewer(show=True)
    image = open_slide_layer(viewer, small_slide)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    set_canvas(viewer, qtbot)
    widget.set_model_source(str(tiny_model_path))
    return viewer, image, widget


def test_visible_region_is_segmented_and_aligned(setup, qtbot, tiny_model_path):
    viewer, image, widget = setup
    assert image.multiscale and image.metadata["mpp"] == 0.5
    view_region(viewer, image, 600, 700, 512, 512)
    widget.segment()
    wait_worker(qtbot, widget)
    assert widget.status.text().startswith("Done"), widget.status.text()

    labels = viewer.layers["tiny · view"]  # model · scope: short and distinct in the layer list
    res = widget.session.result
    # The model is trained at 0.5 µm/px = the slide's level 0; the view (512² and what the canvas's
    # aspect adds) is what was segmented, with no margin: the level's lattice tiles that touch it
    # are read whole, which gives its border its context.
    assert res.level == 0
    y0, x0, h, w = res.region
    assert y0 <= 600 + 1 and x0 <= 700 + 1
    assert y0 + h >= 600 + 512 - 1 and x0 + w >= 700 + 512 - 1
    assert h < 512 + 64 and w < 512 + 64
    # Aligned with the image: same world units, the region's top-left where the image has it.
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, np.asarray(image.translate) + np.array([y0, x0]) * image.scale)
    assert labels.data.shape == (h, w) and labels.data.dtype == np.uint8
    # Exactly what segment() gives for that region of the slide file.
    expected = segment(small_slide_of(image), load_model(tiny_model_path), level=0, region=res.region).labels
    np.testing.assert_array_equal(labels.data, expected)
    # Class names on hover (features) and in the legend; colours are the class colours.
    assert list(labels.features["class"]) == ["unlabelled", *SYNTHETIC.names]
    k = int(np.bincount(labels.data.ravel(), minlength=6)[1:].argmax()) + 1
    yy, xx = np.argwhere(labels.data == k)[0]
    world = np.asarray(labels.translate) + np.array([yy, xx]) * labels.scale
    status = labels.get_status(world, world=True)
    assert SYNTHETIC.names[k - 1] in str(status)
    np.testing.assert_allclose(labels.colormap.map(np.array([k]))[0][:3],
                               np.array(SYNTHETIC.colors[k - 1]) / 255, atol=1e-3)
    for name in SYNTHETIC.names:
        assert name in widget.legend.text()

    # Zooming into the part just segmented: cut out of the cached result, no tile is computed.
    seen = []
    widget._bridge.progress.connect(seen.append)
    view_region(viewer, image, 700, 800, 256, 256)
    widget.segment()
    wait_worker(qtbot, widget)
    assert "from the cache" in widget.status.text() and not seen
    sub = widget.session.result.region
    assert sub[0] >= y0 and sub[1] >= x0 and sub[2] < h
    np.testing.assert_array_equal(labels.data, expected[sub[0] - y0:sub[0] - y0 + sub[2],
                                                       sub[1] - x0:sub[1] - x0 + sub[3]])
    np.testing.assert_allclose(labels.translate, np.asarray(image.translate) + np.array(sub[:2]) * image.scale)

    # Panning by half the view: the lattice tiles the first view ran come from the tile cache,
    # only the new ones run, and the labels are those a fresh run of that region gives.
    ran_before = widget.tile_cache.hits
    view_region(viewer, image, 600 + 256, 700 + 256, 512, 512)
    widget.segment()
    wait_worker(qtbot, widget)
    assert widget.status.text().startswith("Done"), widget.status.text()
    assert widget.tile_cache.hits > ran_before
    panned = widget.session.result.region
    fresh = segment(small_slide_of(image), load_model(tiny_model_path), level=0, region=panned).labels
    np.testing.assert_array_equal(viewer.layers["tiny · view"].data, fresh)


def small_slide_of(image):
    return image.metadata["slide"]


def test_zoomed_out_view_uses_the_model_level_and_whole_slide_is_multiscale(setup, qtbot):
    viewer, image, widget = setup
    widget.scope_combo.setCurrentText("Whole slide")
    widget.segment()
    wait_worker(qtbot, widget)
    assert widget.status.text().startswith("Done"), widget.status.text()
    labels = viewer.layers["tiny · slide"]
    assert labels.multiscale
    assert labels.data[0].shape == image.data[0].shape[:2]
    assert len(labels.data) >= 2 and labels.data[1].shape[0] <= image.data[0].shape[0] // 2
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    assert widget.session.result.whole_slide and widget.session.result.store_path.endswith(".zarr")
    # backed by the zarr store, not an in-memory copy
    assert type(labels.data[0]).__module__.startswith("zarr")
    assert set(np.unique(np.asarray(labels.data[-1]))) <= set(range(6))


def test_a_model_of_a_coarser_level_segments_the_view_there_and_places_it(setup, qtbot, tiny_model_path, tmp_path):
    """A model trained at 1 µm/px on a 0.5 µm/px slide: the view is segmented at level 1 (downsample
    2) and the labels sit where the image has that region (issue 25: every Segment-widget test ran
    at level 0, where a placement that ignores the downsample passes)."""
    viewer, image, widget = setup
    coarse = load_model(tiny_model_path)
    coarse.mpp = 1.0
    path = coarse.save(tmp_path / "coarse.safetensors")
    widget.set_model_source(str(path))
    view_region(viewer, image, 600, 700, 512, 512)
    widget.segment()
    wait_worker(qtbot, widget)
    assert widget.status.text().startswith("Done"), widget.status.text()
    res = widget.session.result
    slide = small_slide_of(image)
    assert res.level == 1 and slide.downsamples[1] == 2
    y0, x0, h, w = res.region  # in level-1 pixels: the view's 512² level-0 pixels are ~256² there
    assert y0 <= 300 + 1 and x0 <= 350 + 1 and y0 + h >= 300 + 256 - 1 and x0 + w >= 350 + 256 - 1
    labels = viewer.layers["coarse · view"]
    np.testing.assert_allclose(labels.scale, np.asarray(image.scale) * 2)
    np.testing.assert_allclose(labels.translate, np.asarray(image.translate) + np.array([y0, x0]) * 2 * image.scale)
    expected = segment(slide, load_model(path), level=1, region=res.region).labels
    np.testing.assert_array_equal(labels.data, expected)


def test_any_image_layer_even_single_scale_and_offset(make_napari_viewer, qtbot, tiny_model_path):
    """A plain RGB numpy layer (another reader's) with its own scale and translate."""
    from napari_dfa._widgets.segment import SegmentWidget

    viewer = make_napari_viewer(show=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(60, 230, size=(700, 900, 3), dtype=np.uint8)
    viewer.add_image(rgb, rgb=True, name="other reader", scale=(2.0, 2.0), translate=(100.0, -40.0))
    widget = SegmentWidget(viewer)
    set_canvas(viewer, qtbot)
    widget.set_model_source(str(tiny_model_path))
    widget.scope_combo.setCurrentText("Shapes ROI")
    shapes = viewer.add_shapes([[[100 + 2 * 200, -40 + 2 * 300], [100 + 2 * 456, -40 + 2 * 556]]],
                               shape_type="rectangle", name="ROI")
    assert shapes.nshapes == 1
    widget.image_combo.setCurrentText("other reader")
    widget.segment()
    wait_worker(qtbot, widget)
    assert widget.status.text().startswith("Done"), widget.status.text()
    labels = viewer.layers["tiny · ROI"]
    y0, x0, h, w = widget.session.result.region
    assert (y0, x0, h, w) == (200, 300, 256, 256)  # the ROI, no margin (the lattice gives context)
    np.testing.assert_allclose(labels.scale, (2.0, 2.0))
    np.testing.assert_allclose(labels.translate, (100 + 2 * y0, -40 + 2 * x0))
    expected = segment(rgb, load_model(tiny_model_path), region=(y0, x0, h, w)).labels
    np.testing.assert_array_equal(labels.data, expected)


def test_cancel_mid_run_leaves_a_consistent_layer(setup, qtbot, tmp_path, monkeypatch):
    viewer, image, widget = setup
    # A fresh cache: the whole-slide store of another test would be reused without any work.
    monkeypatch.setenv("NAPARI_DFA_CACHE", str(tmp_path))
    widget.scope_combo.setCurrentText("Whole slide")
    seen = []
    widget._bridge.progress.connect(lambda v: (seen.append(v), widget.cancel()))
    widget.segment()
    wait_worker(qtbot, widget)
    assert seen, "no progress was reported"
    text = widget.status.text()
    assert "Cancelled" in text, text
    assert widget.segment_button.isEnabled() and not widget.cancel_button.isEnabled()
    name = "tiny · slide"
    # The partial result is shown aligned, its unfinished rows unlabelled (0, transparent).
    labels = viewer.layers[name]
    np.testing.assert_allclose(labels.scale, image.scale)
    np.testing.assert_allclose(labels.translate, image.translate)
    data = np.asarray(labels.data[0] if labels.multiscale else labels.data)
    assert data.shape == image.data[0].shape[:2]
    assert (data[-64:] == 0).all()
    assert labels.metadata["napari_dfa"]["completed"] is False
    # The widget is usable again, and Segment continues the cancelled whole-slide run from the
    # rows already written (same slide, level and model), then reuses the finished store at once.
    widget._bridge.progress.disconnect()
    widget._bridge.progress.connect(widget._on_progress)
    widget.segment()
    wait_worker(qtbot, widget)
    assert widget.status.text().startswith("Done"), widget.status.text()
    labels = viewer.layers[name]
    assert labels.multiscale and labels.metadata["napari_dfa"]["completed"] is True
    assert (np.asarray(labels.data[0][-64:]) > 0).any()
    path = widget.session.result.store_path
    widget.segment()
    wait_worker(qtbot, widget)
    assert widget.session.result.store_path == path and widget.status.text().startswith("Done")
    widget.scope_combo.setCurrentText("Visible region")
    view_region(viewer, image, 0, 0, 256, 256)
    widget.segment()
    wait_worker(qtbot, widget)
    assert widget.status.text().startswith("Done"), widget.status.text()


def test_bad_states_are_messages_not_tracebacks(make_napari_viewer, qtbot, tmp_path, small_slide):
    from napari_dfa._widgets.segment import SegmentWidget

    viewer = make_napari_viewer(show=True)
    widget = SegmentWidget(viewer)
    # No slide open.
    assert widget.segment() is None
    assert "No slide open" in widget.status.text() and widget.status.styleSheet()
    open_slide_layer(viewer, small_slide)
    # The red message goes as soon as its problem does.
    assert "No slide open" not in widget.status.text() and not widget.status.styleSheet()
    # A corrupt checkpoint: named in the message, napari keeps running.
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00" * 64)
    widget.set_model_source(str(bad))
    widget.segment()
    wait_worker(qtbot, widget)
    assert "corrupt.safetensors" in widget.status.text()
    assert widget.session.segmenter is None
    # A pickle pretending to be a model.
    pkl = tmp_path / "model.pth"
    pkl.write_bytes(b"\x80\x04\x95\x00")
    widget.set_model_source(str(pkl))
    widget.segment()
    wait_worker(qtbot, widget)
    assert "model.pth" in widget.status.text()
    # No ROI drawn.
    widget.scope_combo.setCurrentText("Shapes ROI")
    assert widget.segment() is None
    assert "No ROI drawn" in widget.status.text()
    assert widget.segment_button.isEnabled()


def test_grey_16bit_layer_and_recent_models(make_napari_viewer, qtbot, tiny_model_path):
    """A grey 16-bit image (e.g. a fluorescence reader's layer) is segmented as RGB, and said not to
    be H&E; a model opened from a file is offered again by the next Segment widget (recent files)."""
    from napari_dfa._widgets.segment import SegmentWidget

    viewer = make_napari_viewer(show=True)
    grey = (np.random.default_rng(1).random((300, 400)) * 60000).astype(np.uint16)
    viewer.add_image(grey, name="grey16")
    widget = SegmentWidget(viewer)
    set_canvas(viewer, qtbot)
    widget.set_model_source(str(tiny_model_path))
    viewer.reset_view()
    widget.segment()
    wait_worker(qtbot, widget)
    assert widget.status.text().startswith("Done"), widget.status.text()
    labels = viewer.layers["tiny · view"]
    assert labels.data.shape == (300, 400)
    # the check runs for a model without training statistics too: no stain colours is not H&E
    qtbot.waitUntil(lambda: widget.domain_checks_done == 1, timeout=600_000)
    assert widget.domain_warning.startswith("this is a greyscale image (no stain colours), not H&E")
    assert not widget.match_stain.isEnabled()
    rgb = np.repeat((grey // 257).astype(np.uint8)[..., None], 3, axis=2)
    expected = segment(rgb, load_model(tiny_model_path), region=(0, 0, 300, 400)).labels
    np.testing.assert_array_equal(labels.data, expected)

    other = SegmentWidget(make_napari_viewer(show=False))
    sources = [other.model_combo.itemData(i) for i in range(other.model_combo.count())]
    assert str(tiny_model_path) in sources and sources[0] == "demo" and sources[-1] is None  # Open…


def _segment_whole_layer(viewer, qtbot, widget, name):
    checks = widget.domain_checks_done
    widget.scope_combo.setCurrentText("Whole slide")
    widget.image_combo.setCurrentText(name)
    widget.segment()
    wait_worker(qtbot, widget)
    assert widget.status.text().startswith("Done"), widget.status.text()
    # the domain check runs in its own worker once the result is on screen
    qtbot.waitUntil(lambda: widget.domain_checks_done > checks, timeout=600_000)


def test_demo_model_says_so_and_warns_on_a_slide_beyond_it(make_napari_viewer, qtbot):
    """The demo model names itself in the layer; a real IHC scan (skimage's, a real photograph of
    stained tissue) is flagged as beyond its synthetic training tissue, the synthetic sample is not."""
    from skimage.data import immunohistochemistry

    from napari_dfa._sample_data import sample_slide_path
    from napari_dfa._widgets.segment import SegmentWidget
    from napari_dfa.slide import open_slide

    viewer = make_napari_viewer(show=True)
    set_canvas(viewer, qtbot)
    widget = SegmentWidget(viewer)
    widget.set_model_source("demo")

    with open_slide(sample_slide_path()) as slide:
        synthetic = np.asarray(slide.read_region(0, (1536, 1536, 1024, 1024)))  # 0.5 µm/px, as trained
    viewer.add_image(synthetic, rgb=True, name="synthetic")
    _segment_whole_layer(viewer, qtbot, widget, "synthetic")
    assert viewer.layers[-1].name == "demo · slide"
    assert "The demo model knows synthetic tissue only" in widget.status.text()
    assert widget.domain_warning is None

    viewer.add_image(immunohistochemistry(), rgb=True, name="ihc")
    _segment_whole_layer(viewer, qtbot, widget, "ihc")
    # another slide's result of the same model and scope: its own layer, named by its slide
    assert viewer.layers[-1].name == "ihc · demo · slide" and "demo · slide" in viewer.layers
    assert widget.domain_warning is not None and "synthetic" in widget.domain_warning
    assert "Warning" in widget.status.text()
    # said for what it is, with no advice to match its stain, and the Stain box not offered for it
    assert widget.domain_warning.startswith("this looks like an IHC (DAB) stain, not H&E")
    assert "Tick Stain" not in widget.domain_warning
    assert not widget.match_stain.isEnabled() and not widget.match_stain.isChecked()
    assert "Not offered" in widget.match_stain.toolTip()
    widget.image_combo.setCurrentText("synthetic")  # an H&E slide: offered again
    assert widget.match_stain.isEnabled() and "Not offered" not in widget.match_stain.toolTip()


def test_another_labs_stain_is_flagged_and_matched_when_ticked(make_napari_viewer, qtbot, tmp_path, notes):
    """A slide in another lab's stain (the correction tests' case): the domain warning says so and
    points at the Stain box; ticked, the widget's labels are those of the slide matched to the
    model's training stain."""
    from correction_fixtures import CASE_CONFIG, CASE_SEED

    from napari_dfa import synth
    from napari_dfa._widgets.segment import SegmentWidget
    from napari_dfa.inference.stain import slide_stain_match
    from napari_dfa.slide import open_slide

    path, _ = synth.write_slide(tmp_path / "case.tif", CASE_CONFIG, size=(1024, 1024), seed=CASE_SEED, mpp=0.5)
    with open_slide(path) as slide:
        rgb = np.asarray(slide.levels[0])
    viewer = make_napari_viewer(show=True)
    set_canvas(viewer, qtbot)
    widget = SegmentWidget(viewer)
    widget.set_model_source("demo")
    viewer.add_image(rgb, rgb=True, name="another lab")

    def labels():
        layer = viewer.layers[-1]
        return np.asarray(layer.data[0] if layer.multiscale else layer.data)

    _segment_whole_layer(viewer, qtbot, widget, "another lab")
    assert widget.domain_warning is not None and "stain looks unlike" in widget.domain_warning
    assert "Tick Stain: 'Match to the model'" in widget.domain_warning
    # one cause, one warning (it came twice: a notification of its own and the status line's)
    assert sum("stain looks unlike" in text for _, text in notes) == 1, notes
    stored = labels()
    # The warning travels with the result: napari's Save layer writes it into the file.
    result = viewer.layers[widget.session.result.labels_layer]
    caveat = result.metadata["napari_dfa"]["caveat"]
    assert caveat.startswith("Caution: this slide's stain looks unlike") and "Tick" not in caveat
    (saved,) = result.save(str(tmp_path / "labels.geojson"), plugin="napari-dfa")
    features = json.loads(Path(saved).read_text())["features"]
    assert features and all(f["properties"]["caveat"] == caveat for f in features)

    widget.match_stain.setChecked(True)
    widget.scope_combo.setCurrentText("Whole slide")
    widget.segment()
    wait_worker(qtbot, widget)
    assert widget.status.text().startswith("Done"), widget.status.text()
    demo = load_model("demo")
    expected = segment(rgb, demo, stain=slide_stain_match(rgb, demo)).labels
    assert (labels() == np.asarray(expected)).mean() >= 0.999
    assert (labels() != stored).mean() > 0.02
    assert viewer.layers[-1].metadata["napari_dfa"]["caveat"] == caveat  # the slide's, matched or not

    # What the model saw: the slide recoloured to its training stain, aligned, under the labels,
    # and not offered as a slide to segment.
    widget.show_matched.setChecked(True)
    res = widget.session.result
    seen = viewer.layers["what the model saw"]
    np.testing.assert_array_equal(np.asarray(seen.data), res.stain(rgb))
    assert np.abs(np.asarray(seen.data, int) - slide_stain_match(rgb, demo)(rgb)).mean() < 1
    assert (np.asarray(seen.data, int) != rgb).mean() > 0.5  # recoloured, not the slide as stored
    assert viewer.layers.index(seen) == viewer.layers.index(res.labels_layer) - 1
    assert "what the model saw" not in [widget.image_combo.itemText(i) for i in range(widget.image_combo.count())]
    # It follows the next result: a matched view of a region.
    widget.scope_combo.setCurrentText("Visible region")
    view_region(viewer, viewer.layers["another lab"], 200, 300, 256, 256)
    widget.segment()
    wait_worker(qtbot, widget)
    res = widget.session.result
    seen = viewer.layers["what the model saw"]
    y0, x0, h, w = res.region
    np.testing.assert_array_equal(np.asarray(seen.data), res.stain(rgb[y0:y0 + h, x0:x0 + w]))
    np.testing.assert_allclose(seen.translate, viewer.layers[res.labels_layer].translate)
    np.testing.assert_allclose(seen.scale, viewer.layers[res.labels_layer].scale)
    widget.show_matched.setChecked(False)
    assert "what the model saw" not in viewer.layers


def test_closing_napari_while_the_domain_check_runs_does_not_abort(small_slide, tmp_path):
    """The background domain check still runs when the viewer closes and the script ends: the
    process used to abort (SIGABRT, "wrapped C/C++ object of type WorkerBaseSignals has been
    deleted"). In a child process, as a user's session would end."""
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import time
        import napari
        from qtpy.QtWidgets import QApplication
        from napari_dfa._widgets.segment import SegmentWidget
        viewer = napari.Viewer(show=True)
        viewer.open({str(small_slide)!r}, plugin="napari-dfa")
        w = SegmentWidget(viewer)
        viewer.window.add_dock_widget(w)
        w.set_model_source("demo")
        w.segment()
        app = QApplication.instance()
        while w.worker is not None:
            app.processEvents()
            time.sleep(0.005)
        print("checking" if w._domain_worker is not None and w.domain_checks_done == 0 else "not checking", flush=True)
        viewer.close()
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "has been deleted" not in proc.stderr
    assert proc.stdout.strip() == "checking"  # it was closed mid-check


@pytest.fixture
def notes(monkeypatch):
    """Every notification napari would show, as (severity, text)."""
    from napari.utils import notifications

    shown = []
    for severity in ("info", "warning", "error"):
        monkeypatch.setattr(notifications, f"show_{severity}",
                            lambda text, severity=severity: shown.append((severity, str(text))))
    return shown


def test_what_a_user_reads_names_hints_hover_and_a_bad_model_file(make_napari_viewer, qtbot, small_slide,
                                                                   tiny_model_path, tmp_path, notes):
    """Layer names say model and scope, short enough for napari's layer list; the hint follows
    what is open; hovering a whole-slide (multiscale) result names the class; a file that is no
    model leaves the Model list with one message in a user's words."""
    from napari_dfa._widgets.segment import SegmentWidget

    viewer = make_napari_viewer(show=True)
    widget = SegmentWidget(viewer)
    assert "Open a slide" in widget.status.text()
    image = open_slide_layer(viewer, small_slide)
    assert "Open a slide" not in widget.status.text() and "Segment" in widget.status.text()
    set_canvas(viewer, qtbot)
    widget.set_model_source(str(tiny_model_path))
    view_region(viewer, image, 600, 700, 256, 256)
    widget.segment()
    wait_worker(qtbot, widget)
    widget.scope_combo.setCurrentText("Whole slide")
    widget.segment()
    wait_worker(qtbot, widget)
    assert widget.status.text().startswith("Done"), widget.status.text()
    region, whole = viewer.layers["tiny · view"], viewer.layers["tiny · slide"]
    # napari's layer list shows ~16 characters before it elides the middle: the names differ there
    assert region.name[:12] != whole.name[:12] and len(whole.name) <= 16
    assert widget.session.result.labels_layer == whole.name

    # Hover: the class by name and its label, not napari's "(pyramid level), (value)".
    base = np.asarray(whole.data[0])
    k = int(np.bincount(base.ravel(), minlength=6)[1:].argmax()) + 1
    yy, xx = np.argwhere(base == k)[len(np.argwhere(base == k)) // 2]
    world = np.asarray(whole.translate) + (np.array([yy, xx]) + 0.5) * whole.scale
    viewer.camera.center, viewer.camera.zoom = tuple(world), 4.0  # level 0 on screen
    qtbot.wait(200)
    status = whole.get_status(world, world=True)
    assert status["value"] == f"{SYNTHETIC.names[k - 1]} (label {k})", status
    assert status["coordinates"].endswith(f": {SYNTHETIC.names[k - 1]} (label {k})")
    region_status = region.get_status(np.asarray(region.translate) + 0.5 * np.asarray(region.scale), world=True)
    assert "(label " in region_status["value"]

    # A file that is no model: one clear message, no programmer's words, and it leaves the list.
    for bad, data in (("corrupt.safetensors", b"\x00" * 64), ("model.pth", b"\x80\x04\x95\x00")):
        path = tmp_path / bad
        path.write_bytes(data)
        widget.set_model_source(str(path))
        del notes[:]
        widget.segment()
        wait_worker(qtbot, widget)
        text = widget.status.text()
        assert bad in text and "taken off the Model list" in text, text
        assert "Segmenter" not in text and "save()" not in text
        assert [t for _, t in notes] == [text]
        sources = [widget.model_combo.itemData(i) for i in range(widget.model_combo.count())]
        assert str(path) not in sources
        assert widget.model_source() == str(tiny_model_path)  # back to the model in use
