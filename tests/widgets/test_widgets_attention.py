"""Attention-bias widget with a real viewer (Xvfb): current b_c vs. the prior, the checkpoint's
b_c history, focus and uncertainty maps aligned with the labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from widget_helpers import open_slide_layer, set_canvas, view_region, wait_worker

from napari_dfa.model import load_model

pytestmark = pytest.mark.gui


@pytest.fixture
def trained_history_model(tiny_model_path, tmp_path):
    """The tiny model with a δ that moved over three 'epochs', as a trainer records it."""
    seg = load_model(tiny_model_path)
    for epoch, shift in enumerate([0.0, 0.3, 0.7]):
        with torch.no_grad():
            seg.model.bias.delta.add_(torch.tensor([shift, -shift, 0.0, 0.5 * shift, 0.0]))
        seg.record_bias(epoch=epoch)
    path = tmp_path / "history.safetensors"
    seg.save(path)
    return path


def test_shows_current_bias_prior_and_history(make_napari_viewer, qtbot, trained_history_model):
    from napari_dfa._widgets._session import session_for
    from napari_dfa._widgets.attention import AttentionWidget

    viewer = make_napari_viewer(show=True)
    widget = AttentionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.current_bias() is None  # nothing loaded: the plot says so, no traceback
    assert "No model loaded" in widget.figure.axes[0].texts[0].get_text()

    seg = load_model(trained_history_model)
    session_for(viewer).set_model(seg, str(trained_history_model))
    bias = seg.class_bias()
    np.testing.assert_allclose(widget.current_bias(), bias)
    # The numbers shown are the model's b_c, by class name.
    for name, b in zip(seg.class_names, bias):
        assert f"{name} {b:+.3f}" in widget.values.text()
    bars_ax, traj_ax = widget.figure.axes
    lengths = [p.get_width() for p in bars_ax.patches]  # horizontal bars: names read across a narrow dock
    np.testing.assert_allclose(lengths, bias, atol=1e-6)
    prior = bars_ax.collections[0].get_offsets()[:, 0]
    np.testing.assert_allclose(prior, seg.prior_bias(), atol=1e-6)
    # b_c trajectory: one line per class, one point per recorded epoch, from the checkpoint.
    assert [tag for tag, _ in seg.bias_history()] == ["0", "1", "2"]
    lines = traj_ax.get_lines()
    assert len(lines) == len(seg.class_names)
    np.testing.assert_allclose(lines[0].get_ydata(), [v[0] for _, v in seg.bias_history()])
    assert lines[0].get_ydata()[-1] > lines[0].get_ydata()[0]  # class 1's δ went up, as recorded


def test_focus_and_uncertainty_maps_are_aligned_layers(make_napari_viewer, qtbot, small_slide, tiny_model_path):
    from napari_dfa._widgets.attention import AttentionWidget
    from napari_dfa._widgets.segment import SegmentWidget

    viewer = make_napari_viewer(show=True)
    image = open_slide_layer(viewer, small_slide)
    seg_w, att_w = SegmentWidget(viewer), AttentionWidget(viewer)
    # Before anything is segmented: a message, not a traceback.
    assert att_w.add_maps(("focus",)) is None
    assert "Nothing segmented yet" in att_w.status.text()

    set_canvas(viewer, qtbot)
    seg_w.set_model_source(str(tiny_model_path))
    view_region(viewer, image, 512, 300, 200, 200)
    seg_w.segment()
    wait_worker(qtbot, seg_w)
    labels = viewer.layers[seg_w.session.result.labels_layer]

    att_w.add_maps(("focus", "uncertainty"))
    wait_worker(qtbot, att_w)
    assert "Added 6 layer(s)" in att_w.status.text(), att_w.status.text()
    # each kind of map said for what it is: focus maps are not where to correct
    assert "share of its attention" in att_w.status.text() and "not the final label" in att_w.status.text()
    assert "Bright = where to look/correct" not in att_w.status.text()
    names = seg_w.session.segmenter.class_names
    focus = np.stack([viewer.layers[f"focus: {n}"].data for n in names])
    assert focus.shape == (len(names), *labels.data.shape)
    # pixel → class attention: a distribution over the classes at every pixel
    np.testing.assert_allclose(focus.sum(axis=0), 1.0, atol=2e-2)
    unc = viewer.layers["uncertainty"].data
    assert unc.shape == labels.data.shape and 0 <= unc.min() and unc.max() <= 1
    for name in [f"focus: {n}" for n in names] + ["uncertainty"]:
        np.testing.assert_allclose(viewer.layers[name].scale, labels.scale)
        np.testing.assert_allclose(viewer.layers[name].translate, labels.translate)


def _figure_texts(figure):
    """(text, font size, extent in canvas pixels) of every text a drawn figure shows: titles, axis
    labels, the tick labels inside the axes' limits (matplotlib keeps hidden spare ones), texts
    placed on the axes and legend entries."""
    renderer = figure.canvas.get_renderer()
    texts = list(figure.texts)
    for ax in figure.axes:
        for labels, ticks, (lo, hi) in ((ax.get_xticklabels(), ax.get_xticks(), ax.get_xlim()),
                                        (ax.get_yticklabels(), ax.get_yticks(), ax.get_ylim())):
            texts += [t for t, v in zip(labels, ticks) if min(lo, hi) <= v <= max(lo, hi)]
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        if ax.get_legend() is not None:
            texts += [ax.get_legend().get_title(), *ax.get_legend().get_texts()]
    for legend in figure.legends:
        texts += [legend.get_title(), *legend.get_texts()]
    return [(t.get_text(), t.get_fontsize(), t.get_window_extent(renderer)) for t in texts
            if t.get_visible() and t.get_text().strip()]


def test_readable_docked_in_plain_words_with_a_class_legend(make_napari_viewer, qtbot, trained_history_model):
    """Docked at napari's default right-dock width (the issue measured 234 px on a 1280 × 800
    screen), every text of the plot is inside the canvas, none overlaps another, none is tiny; the
    words are a pathologist's (no 'b_c', no 'frequency prior'); the history has a legend with the
    classes in their label-layer colours and whole-number snapshot ticks."""
    from matplotlib.colors import to_rgb
    from qtpy.QtCore import Qt

    from napari_dfa._widgets._session import session_for
    from napari_dfa._widgets.attention import AttentionWidget

    viewer = make_napari_viewer(show=True)
    widget = AttentionWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, area="right")
    window = viewer.window._qt_window
    window.showNormal()
    window.resize(1280, 800)
    seg = load_model(trained_history_model)
    for epoch in range(3, 12):  # a longer history: the ticks must stay whole numbers
        seg.record_bias(epoch=epoch)
    session_for(viewer).set_model(seg, str(trained_history_model))
    for width in (234, 300):
        window.resizeDocks([dock], [width], Qt.Orientation.Horizontal)
        qtbot.wait(200)
        widget.canvas.draw()
        assert widget.canvas.width() <= dock.width(), (widget.canvas.width(), dock.width())
        w, h = widget.canvas.get_width_height()
        texts = _figure_texts(widget.figure)
        assert len(texts) > 10
        for text, size, box in texts:
            assert size >= 7, (text, size)
            assert box.x0 >= -1 and box.x1 <= w + 1 and box.y0 >= -1 and box.y1 <= h + 1, (width, text, box, w, h)
        for i, (a, _, box_a) in enumerate(texts):
            for b, _, box_b in texts[i + 1:]:
                overlap = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0), min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
                assert min(overlap) <= 1, (width, a, b)

    words = " ".join([widget.values.text(), widget.canvas.toolTip(), *(t for t, _, _ in texts)])
    assert "b_c" not in words and "prior" not in words and "δ" not in words, words
    assert "rare" in words and "attention" in words
    # the history's legend: every class by name, in the colour the labels layer gives it
    traj_ax = widget.figure.axes[1]
    legend = traj_ax.get_legend()
    assert legend is not None
    shown = {t.get_text(): to_rgb(line.get_color()) for t, line in zip(legend.get_texts(), legend.get_lines())}
    for name, col in zip(seg.class_names, seg.class_colors):
        assert shown[name] == pytest.approx(tuple(v / 255 for v in col[:3]))
    ticks = [v for v in traj_ax.get_xticks() if traj_ax.get_xlim()[0] <= v <= traj_ax.get_xlim()[1]]
    assert ticks and all(float(v).is_integer() for v in ticks), ticks
