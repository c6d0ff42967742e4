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
    parser.add_argument("--palette", default="auto", choices=("auto", "model", "cb"),
                        help="overlay colours of --headless: auto (the model's, any that looks like "
                             "unlabelled H&E swapped), model, or cb (colour-blind safe)")
    parser.add_argument("--overwrite", action="store_true",
                        help="--headless: replace the outputs of an earlier run in --out")


def run(args) -> int:
    if args.headless:
        outputs = run_headless(out=args.out, model=args.model, device=args.device, level=args.level,
                               slide=args.slide, palette=args.palette, overwrite=args.overwrite)
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
    widgets = dock_widgets(viewer)
    widgets["Segment"].set_model_source(str(model))
    try:
        load_into_session(viewer, str(model))
    except DFAError as exc:
        notify(f"{exc}", severity="warning")
    viewer.layers.selection.active = image
    _zoom_on_centre(viewer, image, DEMO_VIEW)
    return widgets


def dock_widgets(viewer) -> dict:
    """Dock the three widgets for a laptop screen (1280 × 800): Segment on top; Fine-tune and
    Attention bias as tabs under it (Fine-tune in front) with the height left. Each has the
    dock's full width, and its main buttons are in view without scrolling.
    Returns the widgets by name, in the order of ``WIDGETS``."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QTabWidget

    window = viewer.window._qt_window
    window.setTabPosition(Qt.DockWidgetArea.RightDockWidgetArea, QTabWidget.TabPosition.North)
    docks, widgets = {}, {}
    for name in ("Segment", "Attention bias", "Fine-tune"):  # the last tab added is the one in front
        docks[name], widgets[name] = viewer.window.add_plugin_dock_widget(
            "napari-dfa", name, tabify=name == "Fine-tune")
        # The tab shows the widget's name alone: "… (napari-dfa)" made two tabs wider than the dock.
        docks[name].setWindowTitle(name)
    return {name: widgets[name] for name in WIDGETS}


def _zoom_on_centre(viewer, image, size: int) -> None:
    levels = image.data if image.multiscale else [image.data]
    h, w = levels[0].shape[:2]
    sy, sx = image.scale[-2:]
    ty, tx = image.translate[-2:]
    viewer.camera.center = (ty + h / 2 * sy, tx + w / 2 * sx)
    ch, cw = viewer.canvas.size
    viewer.camera.zoom = min(ch, cw) / (size * max(sy, sx))


def run_headless(*, out, model="demo", device="auto", level="auto", slide=None,
                 palette: str = "auto", overwrite: bool = False) -> dict[str, Path]:
    """Segment the sample slide (or ``slide``) and write labels, an overlay PNG and class areas.

    Returns the written files by kind: ``labels`` (OME-Zarr), ``labels_tiff`` (pyramidal TIFF),
    ``overlay`` (PNG: title, slide with class colours and a scale bar, legend with areas; see
    :func:`write_overlay`), ``areas`` (CSV: pixels, mm², % per
    class) — the files are written by :mod:`napari_dfa.export`. Every output follows the shared
    policy (:mod:`napari_dfa.files.outputs`): checked before the model is loaded, an earlier run's only
    replaced with ``overwrite``, each written whole and renamed into place.
    """
    from tqdm import tqdm

    from .._sample_data import sample_slide_path
    from ..files.paths import slide_stem
    from ..labels import write_area_csv, write_labels_tiff
    from ..labels.io import rename_multiscale
    from ..labels.outputs import atomic_output, check_destination
    from ..labels.store import LabelsStore
    from ..inference import Runtime, segment
    from ..model import load_model
    from ..files.outputs import check_output, claims
    from ..slide import auto_level, open_slide

    path = Path(slide) if slide else sample_slide_path()
    inputs = [("--slide", path), ("--model", model)]
    out = check_output(out, folder=True, what="--out", inputs=inputs)
    stem = slide_stem(path)
    files = {"labels": out / f"{stem}.labels.zarr", "labels_tiff": out / f"{stem}_labels.tif",
             "overlay": out / f"{stem}_overlay.png", "areas": out / f"{stem}_areas.csv"}
    if out.is_dir():
        for dst in files.values():
            check_destination(dst, overwrite=overwrite, inputs=inputs)
    out.mkdir(parents=True, exist_ok=True)
    seg = load_model(model)
    with claims(files.values()), open_slide(path) as sl:
        lv = auto_level(sl, seg.mpp) if level == "auto" else int(level)
        with tqdm(desc=f"segmenting {path.name} (level {lv})", unit="tile") as bar:
            def progress(done, total, **_):
                bar.total = total
                bar.n = done
                bar.refresh()

            with atomic_output(files["labels"], claimed=True) as tmp:  # a new store replaces the old one whole
                res = segment(sl, seg, level=lv, runtime=Runtime(device=device), out=tmp, progress=progress)
                labels = np.asarray(res.labels[...])
                rename_multiscale(LabelsStore.open(tmp).group, files["labels"].name)  # written under the twin's
        from ..inference.domain import check_slide

        # A slide beyond the model: the overlay title and the areas CSV say so.
        caveat = check_slide(sl, seg, level=lv).caveat
        place = dict(downsample=res.downsample, mpp=sl.mpp)
        outputs = {"labels": files["labels"]}
        with atomic_output(files["labels_tiff"], claimed=True) as tmp:
            write_labels_tiff(tmp, labels, seg.classes, offset=res.translate, **place)
        with atomic_output(files["overlay"], claimed=True) as tmp:
            write_overlay(tmp, sl, lv, labels, seg, palette=palette, caveat=caveat)
        with atomic_output(files["areas"], claimed=True) as tmp:
            write_area_csv(tmp, labels, seg.classes, **place, caveat=caveat)
        outputs.update({k: files[k] for k in ("labels_tiff", "overlay", "areas")})
    logger.info("demo outputs in %s", out)
    return outputs


def write_overlay(path: Path, slide, level: int, labels: np.ndarray, seg, alpha: float = 0.5,
                  palette: str = "auto", date: str | None = None, caveat: str | None = None) -> Path:
    """The slide under its labels, as a figure a pathologist can read on its own.

    From top to bottom: a title (slide, model, date, level and pixel size), the slide at ``level``
    with the labels in class colours (glass and unsegmented tissue left as they are) and a scale
    bar in µm, and a legend with each class's area (mm² when the pixel size is known) and share of
    the labelled tissue. ``palette``: ``"auto"`` (the model's colours, with any that would pass for
    unlabelled H&E swapped: see :mod:`napari_dfa.labels.palette`), ``"model"`` or ``"cb"``
    (colour-blind safe). ``caveat`` (the slide lies beyond the model: :attr:`DomainReport.caveat
    <napari_dfa.model.domain.DomainReport.caveat>`) follows the title in red, whole, over as many
    lines as it needs. The title and legend are also kept as PNG text (``Title``, ``Description``,
    ``Caveat``)."""
    import datetime as dt

    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    from .. import __version__
    from ..arrays import compute_local
    from ..labels.palette import overlay_palette
    from ..files.paths import slide_stem

    step = max(1, int(np.ceil(max(labels.shape) / OVERLAY_MAX)))
    lab = np.asarray(labels[::step, ::step])
    rgb = compute_local(slide.levels[level][::step, ::step]).astype(np.float32)
    colors = overlay_palette(seg.class_colors, palette)
    table = np.zeros((256, 3), np.float32)
    table[1:len(colors) + 1] = np.asarray(colors, np.float32)
    a = np.where(lab > 0, alpha, 0.0)[..., None]
    img = Image.fromarray((rgb * (1 - a) + table[lab] * a).clip(0, 255).astype(np.uint8))
    W = img.width
    row = max(18, W // 50)  # text readable at the overlay's size
    font = _font(int(row * 0.75))
    um_per_px = slide.level_mpp(level) * step if getattr(slide, "mpp", None) else None
    if um_per_px:
        _scale_bar(img, um_per_px, row, font)

    card = seg.metadata.get("model_card") or {}
    source = seg.metadata.get("source")
    model_name = card.get("name") or (Path(source).stem if source else "model")
    date = date or dt.date.today().isoformat()
    pixel = f"{slide.level_mpp(level):g} µm/px" if um_per_px else "pixel size unknown"
    lines = [f"{slide_stem(slide.path)}  —  {model_name}",
             f"segmented {date}, level {level} ({pixel}), napari-dfa {__version__}"]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    warning = _wrap(measure, caveat, font, W - row // 2) if caveat else []  # never cut: it is the point
    header = Image.new("RGB", (W, row * (len(lines) + len(warning)) + row // 2), "white")
    draw = ImageDraw.Draw(header)
    for i, text in enumerate(lines):
        draw.text((row // 3, row // 4 + i * row), _fit(draw, text, font, W - row // 2), fill="black", font=font)
    for i, text in enumerate(warning, start=len(lines)):
        draw.text((row // 3, row // 4 + i * row), text, fill=(190, 0, 0), font=font)

    counts = np.bincount(np.asarray(labels).ravel(), minlength=len(colors) + 1)[: len(colors) + 1]
    tissue = max(1, int(counts[1:].sum()))
    area_px = (slide.level_mpp(level) ** 2 / 1e6) if um_per_px else None  # mm² per labels pixel
    entries = []
    for k, name in enumerate(seg.class_names):
        share = f"{100 * counts[k + 1] / tissue:.1f} % of labelled tissue"
        entries.append(f"{name}  {counts[k + 1] * area_px:.3f} mm², {share}" if area_px else f"{name}  {share}")
    entries.append("no colour: glass or not segmented")
    legend = Image.new("RGB", (W, row * len(entries) + row // 2), "white")
    draw = ImageDraw.Draw(legend)
    for k, text in enumerate(entries):
        y = row // 4 + k * row
        box = [row // 3, y, row // 3 + int(row * 0.7), y + int(row * 0.7)]
        draw.rectangle(box, fill=tuple(colors[k]) if k < len(colors) else "white", outline="black")
        draw.text((row * 1.3, y), _fit(draw, text, font, W - row * 1.5), fill="black", font=font)

    canvas = Image.new("RGB", (W, header.height + img.height + legend.height), "white")
    canvas.paste(header, (0, 0))
    canvas.paste(img, (0, header.height))
    canvas.paste(legend, (0, header.height + img.height))
    info = PngInfo()
    info.add_text("Title", " | ".join(lines))
    info.add_text("Description", "\n".join(entries))
    if caveat:
        info.add_text("Caveat", caveat)
    info.add_text("Software", f"napari-dfa {__version__}")
    canvas.save(path, pnginfo=info)
    return path


def nice_scale_bar(um_per_px: float, width_px: int, fraction: float = 0.2) -> tuple[float, int]:
    """A round bar length (1, 2 or 5 × 10^n µm) near ``fraction`` of the width: (µm, pixels)."""
    target = max(um_per_px, width_px * fraction * um_per_px)
    exp = np.floor(np.log10(target))
    um = max(m * 10**exp for m in (1, 2, 5) if m * 10**exp <= target)
    return float(um), max(1, int(round(um / um_per_px)))


def _scale_bar(img, um_per_px: float, row: int, font) -> None:
    """A black bar with its length, on a white box in the bottom-left corner of ``img``."""
    from PIL import ImageDraw

    um, px = nice_scale_bar(um_per_px, img.width)
    label = f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"
    draw = ImageDraw.Draw(img)
    pad = row // 3
    text_w = draw.textlength(label, font=font)
    x0, y1 = pad, img.height - pad
    box = [x0, y1 - int(row * 1.6), x0 + max(px, int(text_w)) + 2 * pad, y1]
    draw.rectangle(box, fill="white")
    bar_y = y1 - pad - max(2, row // 6)
    draw.rectangle([x0 + pad, bar_y, x0 + pad + px - 1, y1 - pad], fill="black")
    draw.text((x0 + pad, box[1] + pad // 2), label, fill="black", font=font)


def _font(size: int):
    """DejaVu Sans from matplotlib (a dependency): Pillow's own font has no µ, ² or dashes."""
    from PIL import ImageFont

    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: float) -> list[str]:
    """``text`` in lines of at most ``width`` pixels, broken between words."""
    lines, line = [], ""
    for word in text.split():
        wider = f"{line} {word}".strip()
        if line and draw.textlength(wider, font=font) > width:
            lines.append(line)
            wider = word
        line = wider
    return lines + ([line] if line else [])


def _fit(draw, text: str, font, width: float) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
