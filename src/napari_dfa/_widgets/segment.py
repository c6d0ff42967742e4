"""Segment widget: pick a model, a device and a scope, click Segment, get a class Labels layer.

Thin: :func:`napari_dfa.inference.segment` does the work in a napari thread worker; this widget
turns the view into a region, and the result into a Labels layer placed on the image layer (any
image layer, from any reader, multiscale or not).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..paths import region_labels_store_path
from ..errors import Cancelled, ConfigError, DataError
from . import _common as c

logger = logging.getLogger(__name__)

SCOPES = {"Visible region": "visible", "Whole slide": "whole", "Shapes ROI": "roi"}
CACHE_SIZE = 4  # region results kept per widget
DEVICES = ("auto", "cuda", "mps", "cpu")
OPEN_ITEM = "Open…"


@dataclass
class CachedRegion:
    """Labels of a region segmented before; served as a SegmentResult-like answer."""

    labels: np.ndarray
    path: None = None
    completed: bool = True
    tiles_done: int = 0
    tiles_total: int = 0
    cached: bool = True


class RegionCache:
    """The last few region results per (image, level, model): a view that lies inside one of them
    is cut out of it instead of being segmented again (re-clicking, zooming in, panning back).
    A fine-tuned model is another object, so its results never mix with its parent's."""

    def __init__(self, size: int = CACHE_SIZE):
        self.size = size
        self.items: list[tuple[tuple, tuple, np.ndarray, object]] = []

    def get(self, image: str, level: int, seg, region) -> np.ndarray | None:
        y0, x0, h, w = region
        for key, (cy, cx, ch, cw), labels, _ in self.items:
            if key == (image, level, id(seg)) and cy <= y0 and cx <= x0 and y0 + h <= cy + ch \
                    and x0 + w <= cx + cw:
                return labels[y0 - cy:y0 - cy + h, x0 - cx:x0 - cx + w].copy()
        return None

    def put(self, image: str, level: int, seg, region, labels: np.ndarray) -> None:
        # the model is kept with its entries so that id(seg) cannot be reused by another model
        self.items = [((image, level, id(seg)), tuple(region), labels, seg), *self.items][: self.size]


class SegmentWidget(QWidget):
    """Dock widget: model, device, scope, Segment / Cancel, progress with ETA, class legend.

    Arguments:
      napari_viewer: the viewer (napari passes it when the widget is docked).
      parent: optional Qt parent.
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = c.session_for(napari_viewer)
        c.warm_up()
        self.worker = None
        self.cache = RegionCache()
        self._cancel = threading.Event()
        self._bridge = c.Bridge()
        self._bridge.progress.connect(self._on_progress)
        self._eta = c.Eta()

        self.image_combo = QComboBox()
        self.model_combo = QComboBox()
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(list(SCOPES))
        self.segment_button = QPushButton("Segment")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("Open a slide, then click Segment.")
        self.status.setWordWrap(True)
        self.legend = QLabel()
        self.legend.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("Device", self.device_combo)
        form.addRow("Scope", self.scope_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.segment_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(QLabel("<b>Classes</b>"))
        layout.addWidget(self.legend)
        layout.addStretch(1)

        self._fill_models()
        self.model_combo.activated.connect(self._on_model_activated)
        self.segment_button.clicked.connect(self.segment)
        self.cancel_button.clicked.connect(self.cancel)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._refresh_images)
        self.session.model_changed.connect(self._on_model_changed)
        self._refresh_images()
        self._on_model_changed()

    # --- choices ---------------------------------------------------------------------------
    def _fill_models(self, select: str | None = None) -> None:
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItem("Demo model (bundled)", c.DEMO)
        sources = [s for s in [self.session.model_source, *c.recent_models()] if s and s != c.DEMO]
        for src in dict.fromkeys(sources):
            self.model_combo.addItem(Path(src).name, src)
        self.model_combo.addItem(OPEN_ITEM, None)
        want = select or self.session.model_source or c.DEMO
        idx = self.model_combo.findData(want)
        self.model_combo.setCurrentIndex(max(idx, 0))
        self.model_combo.blockSignals(False)

    def set_model_source(self, source: str) -> None:
        """Choose a model by name or path (the combo box lists it from now on)."""
        source = str(source)
        if self.model_combo.findData(source) < 0:
            self.model_combo.insertItem(self.model_combo.count() - 1, Path(source).name, source)
        self.model_combo.setCurrentIndex(self.model_combo.findData(source))

    def model_source(self) -> str:
        return self.model_combo.currentData() or c.DEMO

    def _on_model_activated(self, index: int) -> None:
        if self.model_combo.itemData(index) is not None:
            return
        path, _ = QFileDialog.getOpenFileName(self, "Open a napari-dfa model", str(Path.home()),
                                              "napari-dfa models (*.safetensors);;All files (*)")
        if path:
            self.set_model_source(path)
        else:
            self._fill_models()

    def _refresh_images(self, event=None) -> None:
        current = self.image_combo.currentText()
        self.image_combo.clear()
        names = [layer.name for layer in c.image_layers(self.viewer)]
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        elif names:
            self.image_combo.setCurrentIndex(len(names) - 1)

    def _on_model_changed(self) -> None:
        seg = self.session.segmenter
        if seg is None:
            self.legend.setText("<i>no model loaded yet</i>")
            return
        rows = [f'<span style="background-color: rgb{tuple(int(v) for v in col[:3])}">&nbsp;&nbsp;&nbsp;&nbsp;'
                f"</span>&nbsp;{k + 1}&nbsp;{name}" for k, (name, col)
                in enumerate(zip(seg.class_names, seg.class_colors))]
        self.legend.setText("<br>".join(rows))
        if self.session.model_source and self.model_combo.findData(self.session.model_source) < 0:
            self._fill_models(self.session.model_source)

    # --- run -------------------------------------------------------------------------------
    def segment(self):
        """Start segmenting the chosen scope; returns the worker (None when the inputs are bad)."""
        if self.worker is not None:
            return self.worker
        scope = SCOPES[self.scope_combo.currentText()]
        try:
            layer = c.pick_image_layer(self.viewer, self.image_combo.currentText() or None)
            pyramid = c.LayerPyramid(layer)
            region0 = None
            if scope == "visible":
                region0 = c.visible_region(self.viewer, pyramid)
            elif scope == "roi":
                region0 = c.shapes_roi(self.viewer, pyramid)
        except DataError as exc:
            self._say(str(exc), error=True)
            return None
        source, device = self.model_source(), self.device_combo.currentText()
        session_model = self.session.segmenter if self.session.model_source == source else None
        self._cancel.clear()
        self._eta = c.Eta()
        self.progress.setRange(0, 0)  # busy until the first tile reports
        self.segment_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._say("Loading the model…" if session_model is None else "Segmenting…")

        def work():
            seg = session_model
            if seg is None:
                from ..model import load_model

                seg = load_model(source)
            return self._run(seg, pyramid, scope, region0, device), seg

        self.worker = c.start_worker(work, on_done=lambda out: self._on_done(out, source, layer.name),
                                     on_error=self._on_error, on_finished=self._on_finished)
        return self.worker

    def _run(self, seg, pyramid, scope, region0, device):
        """Worker thread: choose the level, segment, return (result, level, region)."""
        from ..inference import segment

        def progress(done, total, **info):
            self._bridge.progress.emit((int(done), int(total)))

        if scope == "whole":
            level = pyramid.level_for(seg.mpp, (0, 0, *pyramid.shapes[0]))
            out = _whole_slide_store(pyramid, level, seg)
            data, lv = pyramid.source(level)
            kwargs = dict(level=lv, region=None, device=device, out=out, progress=progress,
                          cancel=self._cancel.is_set)
            try:
                # The store is named by slide, level and model weights: a finished one is reused at
                # once, a cancelled one continues from the rows already written.
                res = segment(data, seg, resume=out.exists(), **kwargs)
            except ConfigError:  # written with other settings: start over
                res = segment(data, seg, resume=False, **kwargs)
            return res, level, (0, 0, *pyramid.shapes[level])
        level = pyramid.level_for(seg.mpp, region0)
        region = pyramid.to_level(level, region0, pad=int(getattr(seg, "context", 0)))
        hit = self.cache.get(pyramid.path, level, seg, region)
        if hit is not None:
            return CachedRegion(labels=hit), level, region
        data, lv = pyramid.source(level)
        res = segment(data, seg, level=lv, region=region, device=device,
                      progress=progress, cancel=self._cancel.is_set)
        if res.completed:
            self.cache.put(pyramid.path, level, seg, region, np.asarray(res.labels))
        return res, level, region

    def cancel(self) -> None:
        """Ask the running job to stop after the tile in flight."""
        self._cancel.set()
        self._say("Cancelling…")

    # --- UI thread callbacks ---------------------------------------------------------------
    def _on_progress(self, value) -> None:
        done, total = value
        if not self._eta.due(done, total):
            return
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        if not self._cancel.is_set():
            self._say(f"Segmenting: {self._eta.text(done, total)}")

    def _on_done(self, out, source: str, layer_name: str) -> None:
        (res, level, region), seg = out
        if self.session.segmenter is not seg:
            self.session.set_model(seg, source)
            if source != c.DEMO:
                c.add_recent_model(source)
        if layer_name not in self.viewer.layers:
            self._say("The image layer was closed while segmenting; result dropped.", error=True)
            return
        pyramid = c.LayerPyramid(self.viewer.layers[layer_name])
        scale, translate = pyramid.placement(level, region)
        whole = res.path is not None
        name = f"{layer_name} DFA labels" + (" (whole slide)" if whole else "")
        meta = {"napari_dfa": {"image_layer": layer_name, "level": level, "region": list(region),
                               "model": source, "completed": bool(getattr(res, "completed", True))}}
        if whole:
            data = open_label_pyramid(res)
            data = data if len(data) > 1 else data[0]  # a cancelled run has no display pyramid yet
            labels = c.put_labels_layer(self.viewer, name, data, scale=scale, translate=translate,
                                        segmenter=seg, multiscale=isinstance(data, list), metadata=meta,
                                        units=pyramid.units)
        else:
            labels = c.put_labels_layer(self.viewer, name, np.asarray(res.labels), scale=scale,
                                        translate=translate, segmenter=seg, metadata=meta,
                                        units=pyramid.units)
        self.session.set_result(c.RegionResult(
            image_layer=layer_name, level=level, region=tuple(int(v) for v in region),
            downsample=pyramid.downsamples[level], scale=scale, translate=translate,
            labels_layer=labels.name, whole_slide=whole,
            store_path=str(res.path) if whole else None))
        if getattr(res, "completed", True):
            h, w = region[2], region[3]
            cached = " (from the cache)" if getattr(res, "cached", False) else ""
            self._say(f"Done{cached}: {h}×{w} px at level {level} → layer '{labels.name}'.")
        else:
            self._say(f"Cancelled after {res.tiles_done} of {res.tiles_total} tiles; "
                      "the unfinished part is left unlabelled.")

    def _on_error(self, exc) -> None:
        if isinstance(exc, Cancelled):
            self._say("Cancelled; the labels are unchanged.")
            return
        logger.debug("segmentation failed", exc_info=exc)
        self._say(c.error_text(exc), error=True)

    def _on_finished(self) -> None:
        self.worker = None
        self.segment_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if not self._cancel.is_set() else 0)

    def _say(self, text: str, *, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet("color: #e05050;" if error else "")
        if error:
            c.notify(text, severity="warning")


def _whole_slide_store(pyramid, level: int, seg) -> Path:
    """A zarr labels store per (slide, level, model weights): slides and models never collide."""
    from ..inference import model_fingerprint

    path = region_labels_store_path(pyramid.path, level, model_fingerprint(seg))
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def open_label_pyramid(res) -> list:
    """The levels of a whole-slide labels store (OME-Zarr multiscales), finest first."""
    import zarr

    try:
        group = zarr.open_group(str(res.path), mode="r")
    except Exception:  # a bare array store: one level
        return [res.labels]
    attrs = group.attrs.asdict()
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if ms:
        paths = [d["path"] for d in ms[0]["datasets"]]
    else:
        paths = sorted((k for k in group.array_keys() if k.isdigit()), key=int)
    levels = [group[p] for p in paths if p in group]
    return levels or [res.labels]
