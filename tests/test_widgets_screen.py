"""The three widgets docked together fit a 1280 × 800 screen (a real viewer window under Xvfb):
the window is not forced taller than the screen, the docks do not overlap, and every widget's
status line is in view, above its controls (never pushed below a plot)."""

from __future__ import annotations

import pytest
from widget_fixtures import open_slide_layer, restore_torch_threads, small_slide, tiny_model_path  # noqa: F401

from napari_dfa.model import load_model

pytestmark = pytest.mark.gui


def test_three_docked_widgets_fit_1280_by_800(make_napari_viewer, qtbot, small_slide, tiny_model_path):
    from napari_dfa._widgets._session import session_for
    from napari_dfa._widgets.attention import AttentionWidget
    from napari_dfa._widgets.finetune import FinetuneWidget
    from napari_dfa._widgets.segment import SegmentWidget

    viewer = make_napari_viewer(show=True)
    open_slide_layer(viewer, small_slide)
    # With a model loaded every widget shows all it has: legend, plots, class list.
    session_for(viewer).set_model(load_model(tiny_model_path), str(tiny_model_path))
    widgets = [SegmentWidget(viewer), AttentionWidget(viewer), FinetuneWidget(viewer)]
    docks = [viewer.window.add_dock_widget(w, name=type(w).__name__, area="right") for w in widgets]
    window = viewer.window._qt_window
    window.showNormal()
    window.resize(1280, 800)
    qtbot.wait(300)

    assert window.width() <= 1280 and window.height() <= 800, (window.width(), window.height())
    # No widget asks for more height than the dock area offers, together or alone.
    central = window.centralWidget().geometry()
    need = sum(d.minimumSizeHint().height() for d in docks)
    assert need <= central.height(), (need, central.height(), [d.minimumSizeHint().height() for d in docks])
    rects = [d.geometry() for d in docks]
    for i, r in enumerate(rects):
        assert r.height() > 0 and window.rect().contains(r), (i, r)
        for s in rects[i + 1:]:
            assert not r.intersects(s), (r, s)
    for w in widgets:
        # the status line is at the top of its widget and visible
        assert w.status.isVisible() and w.status.geometry().top() <= w.scroll.geometry().top()
        assert not w.status.visibleRegion().isEmpty()
    # the Attention widget's text sits above its plot
    att = widgets[1]
    assert att.values.geometry().bottom() <= att.canvas.geometry().top()
