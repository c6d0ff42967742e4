"""``napari-dfa demo``: napari on the sample slide with the demo model and the three widgets docked.

    napari-dfa demo                          # opens napari (needs a display)
    napari-dfa demo --headless [--out DIR]   # segments the sample, writes labels + an overlay PNG

Without a display, the plain form says so and points to ``--headless``. napari is imported only
when the window opens (``--help`` and the headless path never load Qt).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

HELP = "open napari on the sample slide with the demo model (or --headless: segment it and write PNGs)"
WIDGETS = ("Segment", "Attention bias", "Fine-tune")
OVERLAY_MAX = 2048  # longest side of the overlay PNG
DEMO_VIEW = 1024  # the demo opens zoomed on a 1024² region at full resolution: Segment is quick there


def add_arguments(parser) -> None:
    parser.add_argument("--headless", action="store_true",
                        help="no window: segment the sample slide and write labels and an overlay PNG")
    parser.add_argument("--out", default="out/demo", help="output folder of --headless (default: out/demo)")
    parser.add_argument("--model", default="demo", help="model name or .safetensors file (default: the bundled demo)")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    parser.add_argument("--level", default="auto",
                        help="pyramid level for --headless: 'auto' = nearest the model's µm/px, or an index")
    parser.add_argument("--slide", default=None, help="segment this slide instead of the sample")


def run(args) -> int:
    if args.headless:
        outputs = run_headless(out=args.out, model=args.model, device=args.device, level=args.level,
                               slide=args.slide)
        for what, path in outputs.items():
            print(f"{what}: {path}")
        return 0
    if not has_display():
        print("napari-dfa demo: no display found (DISPLAY/WAYLAND_DISPLAY unset), so napari cannot open a "
              "window here.\nRun the headless demo instead:  napari-dfa demo --headless --out out/demo",
              file=sys.stderr)
        return 1
    import napari

    from qtpy.QtCore import QTimer

    viewer = napari.Viewer(title="napari-dfa demo")
    build_viewer(viewer, model=args.model, slide=args.slide)
    image = viewer.layers.selection.active
    # Zoom again once the window is laid out: the docks change the canvas size.
    QTimer.singleShot(500, lambda: _zoom_on_centre(viewer, image, DEMO_VIEW))
    napari.run()
    return 0


def has_display() -> bool:
    """Whether a window can open: always on macOS/Windows, on Linux when X11 or Wayland is there."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def build_viewer(viewer, *, model: str = "demo", slide: str | None = None) -> dict:
    """Open the sample (or ``slide``), dock the three widgets, load ``model``, zoom on tissue.

    Returns the docked widgets by name. A missing or broken model is a notification, and the
    viewer stays usable (the Segment widget can open another model).
    """
    from .._sample_data import sample_slide_path
    from .._widgets._base import notify
    from .._widgets._session import load_into_session
    from ..errors import DFAError

    if slide is None:
        layers = viewer.open_sample("napari-dfa", "synthetic_slide")
    else:
        layers = viewer.open(str(slide or sample_slide_path()), plugin="napari-dfa")
    image = next(layer for layer in layers if layer.__class__.__name__ == "Image")
    widgets = {}
    for name in WIDGETS:
        _dock, widget = viewer.window.add_plugin_dock_widget("napari-dfa", name)
        widgets[name] = widget
    widgets["Segment"].set_model_source(str(model))
    try:
        load_into_session(viewer, str(model))
    except DFAError as exc:
        notify(f"{exc}", severity="warning")
    viewer.layers.selection.active = image
    _zoom_on_centre(viewer, image, DEMO_VIEW)
    return widgets


def _zoom_on_centre(viewer, image, size: int) -> None:
    levels = image.data if image.multiscale else [image.data]
    h, w = levels[0].shape[:2]
    sy, sx = image.scale[-2:]
    ty, tx = image.translate[-2:]
    viewer.camera.center = (ty + h / 2 * sy, tx + w / 2 * sx)
    ch, cw = viewer.canvas.size
    viewer.camera.zoom = min(ch, cw) / (size * max(sy, sx))


def run_headless(*, out, model="demo", device="auto", level="auto", slide=None) -> dict[str, Path]:
    """Segment the sample slide (or ``slide``) and write labels, an overlay PNG and class areas.

    Returns the written files by kind: ``labels`` (OME-Zarr), ``labels_tiff`` (pyramidal TIFF),
    ``overlay`` (PNG: slide with class colours and a legend), ``areas`` (CSV: pixels, mm², % per
    class) — the files are written by :mod:`napari_dfa.export`.
    """
    from tqdm import tqdm

    from .._sample_data import sample_slide_path
    from ..paths import slide_stem
    from ..labels import write_area_csv, write_labels_tiff
    from ..inference import segment
    from ..model import load_model
    from ..slide import open_slide

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seg = load_model(model)
    path = Path(slide) if slide else sample_slide_path()
    with open_slide(path) as sl:
        lv = sl.best_level_for_mpp(seg.mpp) if level == "auto" and seg.mpp and sl.mpp else (
            0 if level == "auto" else int(level))
        with tqdm(desc=f"segmenting {path.name} (level {lv})", unit="tile") as bar:
            def progress(done, total, **_):
                bar.total = total
                bar.n = done
                bar.refresh()

            res = segment(sl, seg, level=lv, device=device, out=out / f"{slide_stem(path)}.labels.zarr",
                          progress=progress)
        labels = np.asarray(res.labels[...])
        place = dict(downsample=res.downsample, mpp=sl.mpp)
        outputs = {"labels": Path(res.path)}
        outputs["labels_tiff"] = write_labels_tiff(out / f"{slide_stem(path)}_labels.tif", labels, seg.class_names,
                                                   seg.class_colors, offset=res.translate, **place)
        outputs["overlay"] = write_overlay(out / f"{slide_stem(path)}_overlay.png", sl, lv, labels, seg)
        outputs["areas"] = write_area_csv(out / f"{slide_stem(path)}_areas.csv", labels, seg.class_names, **place)
    logger.info("demo outputs in %s", out)
    return outputs


def write_overlay(path: Path, slide, level: int, labels: np.ndarray, seg, alpha: float = 0.45) -> Path:
    """The slide under its labels in class colours (glass left as is), with a class legend."""
    from PIL import Image, ImageDraw, ImageFont

    step = max(1, int(np.ceil(max(labels.shape) / OVERLAY_MAX)))
    lab = labels[::step, ::step]
    rgb = np.asarray(slide.levels[level][::step, ::step].compute()).astype(np.float32)
    palette = np.zeros((256, 3), np.float32)
    palette[1:len(seg.class_colors) + 1] = np.asarray(seg.class_colors, np.float32)
    colored = palette[lab]
    a = np.where(lab > 0, alpha, 0.0)[..., None]
    blend = (rgb * (1 - a) + colored * a).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(blend)
    row = max(18, img.width // 50)  # legend readable at the overlay's size
    try:
        font = ImageFont.load_default(size=int(row * 0.75))
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    legend = Image.new("RGB", (img.width, row * len(seg.class_names) + row // 2), "white")
    draw = ImageDraw.Draw(legend)
    counts = np.bincount(labels.ravel(), minlength=len(seg.class_names) + 1)
    tissue = max(1, int(counts[1:].sum()))
    for k, (name, col) in enumerate(zip(seg.class_names, seg.class_colors)):
        y = row // 4 + k * row
        draw.rectangle([row // 3, y, row // 3 + int(row * 0.7), y + int(row * 0.7)],
                       fill=tuple(int(v) for v in col), outline="black")
        draw.text((row * 1.3, y), f"{name}  {100 * counts[k + 1] / tissue:.1f} % of tissue", fill="black",
                  font=font)
    canvas = Image.new("RGB", (img.width, img.height + legend.height), "white")
    canvas.paste(img, (0, 0))
    canvas.paste(legend, (0, img.height))
    canvas.save(path)
    return path
