"""What the widget tests do with a real viewer: open a slide through our reader, point the camera,
size the canvas, wait for a widget's worker. Their fixtures are in tests/widgets/conftest.py (and
the slide and tiny model in tests/conftest.py)."""

from __future__ import annotations


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
