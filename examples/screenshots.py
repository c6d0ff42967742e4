"""Screenshots of the three widgets in use, for the README (docs/images/*.png).

    python examples/screenshots.py [--out docs/images] [--model demo] [--steps 30]

Runs napari for real (re-executes itself under ``xvfb-run`` when there is no display) in a
1280 × 800 window, a laptop screen: opens the sample slide with the demo model and docks the widgets
as ``napari-dfa demo`` does (Segment on top, Fine-tune and Attention bias as tabs), then

1. Segment: segments the visible region           -> segment.png
2. Attention bias: adds focus maps and uncertainty -> attention.png
3. Fine-tune: paints a correction, fine-tunes, re-segments -> finetune.png
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path


def _reexec_under_xvfb() -> None:
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("_SHOTS_XVFB"):
        return
    if shutil.which("xvfb-run") is None:
        sys.exit("screenshots: no display and no xvfb-run")
    os.environ["_SHOTS_XVFB"] = "1"
    os.execvp("xvfb-run", ["xvfb-run", "-a", "-s", "-screen 0 1600x1200x24", sys.executable, *sys.argv])


def wait(app, cond, timeout=600.0) -> None:
    from qtpy.QtCore import QEventLoop, QTimer

    loop, end = QEventLoop(), time.monotonic() + timeout
    timer = QTimer()
    timer.setInterval(50)
    timer.timeout.connect(lambda: loop.quit() if cond() or time.monotonic() > end else None)
    timer.start()
    loop.exec()
    timer.stop()
    if not cond():
        raise TimeoutError("step did not finish")


def settle(app, seconds=0.7) -> None:
    end = time.monotonic() + seconds
    wait(app, lambda: time.monotonic() > end)


SCREEN = (1280, 800)  # the README shows what a laptop shows


def show_tab(viewer, widget) -> None:
    """Bring ``widget``'s dock to the front of its tab group (Segment, on its own, stays)."""
    from qtpy.QtWidgets import QDockWidget

    for dock in viewer.window._qt_window.findChildren(QDockWidget):
        if dock.isAncestorOf(widget):
            dock.raise_()


def save(viewer, path: Path) -> None:
    from PIL import Image

    img = viewer.window.screenshot(canvas_only=False, flash=False)
    # 256 colours (dithered) halve the file; the README does not need 24-bit H&E.
    pal = Image.fromarray(img).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                       dither=Image.Dither.FLOYDSTEINBERG)
    pal.save(path, optimize=True)
    print(f"wrote {path} ({img.shape[1]}x{img.shape[0]})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/images")
    p.add_argument("--model", default="demo")
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    _reexec_under_xvfb()

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_dfa.commands.demo import DEMO_VIEW, _zoom_on_centre, build_viewer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-dfa")
    app = QApplication.instance()
    widgets = build_viewer(viewer, model=args.model)
    window = viewer.window._qt_window
    window.showNormal()
    window.resize(*SCREEN)
    image = viewer.layers["synthetic H&E"]
    seg_w, att_w, ft_w = widgets["Segment"], widgets["Attention bias"], widgets["Fine-tune"]

    # 1. Segment the visible region.
    settle(app)
    _zoom_on_centre(viewer, image, DEMO_VIEW)
    settle(app)
    seg_w.segment_button.click()
    wait(app, lambda: seg_w.worker is None)
    viewer.layers.selection.active = viewer.layers[seg_w.session.result.labels_layer]
    settle(app)
    save(viewer, out / "segment.png")

    # 2. Attention bias: b_c vs prior, focus map of one class, uncertainty.
    show_tab(viewer, att_w)
    att_w.add_maps(("focus", "uncertainty"))
    wait(app, lambda: att_w.worker is None)
    viewer.layers[seg_w.session.result.labels_layer].visible = False
    viewer.layers["uncertainty"].visible = False
    for layer in viewer.layers:
        if layer.name.startswith("focus: "):
            layer.visible = layer.name == "focus: tumour"
    settle(app)
    save(viewer, out / "attention.png")

    # 3. Fine-tune: paint the centre as stroma (a brush-sized disc), fine-tune, see it change.
    for layer in viewer.layers:
        if layer.name.startswith("focus: ") or layer.name == "uncertainty":
            layer.visible = False
    labels = viewer.layers[seg_w.session.result.labels_layer]
    labels.visible = True
    show_tab(viewer, ft_w)
    corrections = ft_w.start_corrections()
    ft_w.set_class("stroma")
    h, w = corrections.data.shape
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 6) ** 2
    corrections.data_setitem(np.nonzero(disc), ft_w.class_combo.currentIndex() + 1)
    ft_w.steps.setValue(args.steps)
    ft_w.guard.setChecked(False)
    ft_w.finetune_button.click()
    wait(app, lambda: ft_w.worker is None)
    corrections.opacity = 0.35
    settle(app)
    ft_w.scroll.ensureWidgetVisible(ft_w.area_table)  # the review: areas before → after
    settle(app)
    save(viewer, out / "finetune.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
