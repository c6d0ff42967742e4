"""Attention-bias widget with a real viewer (Xvfb): current b_c vs. the prior, the checkpoint's
b_c history, focus and uncertainty maps aligned with the labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from widget_fixtures import (  # noqa: F401  (fixtures)
    open_slide_layer,
    restore_torch_threads,
    set_canvas,
    small_slide,
    tiny_model_path,
    view_region,
    wait_worker,
)

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
    heights = [p.get_height() for p in bars_ax.patches]
    np.testing.assert_allclose(heights, bias, atol=1e-6)
    prior = bars_ax.collections[0].get_offsets()[:, 1]
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
