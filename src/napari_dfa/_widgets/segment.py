"""Segment widget: pick a model, a device and a scope, click Segment, get a class Labels layer.

Thin: :func:`napari_dfa.inference.segment` does the work in a napari thread worker; this widget
turns the view into a region, and the result into a Labels layer placed on the image layer (any
image layer, from any reader, multiscale or not).

(Over 450 lines: one widget class — its controls, the run in its worker and the UI-thread callbacks
that turn the result into layers and warnings all share the widget's state: the chosen model, the
stain matches, the region and tile caches, the busy flag; the module functions are ~20 lines.)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
)

from ..errors import CheckpointError, ConfigError, DataError
from ..inference.region_cache import CachedRegion, RegionCache
from ..inference.tile_cache import TileCache
from ..labels import label_levels
from ..files.paths import slide_labels_store_path
from ._base import DFAWidget, body_layout, eliding_combo, full_text, narrow_combo, start_worker
from ._fold import Fold
from ._labels_layer import put_labels_layer, result_layer_name
from ._layers import (
    LayerPyramid,
    image_layers,
    layer_pyramid,
    pick_image_layer,
    recoloured_levels,
    shapes_roi,
    visible_region,
)
from ._session import DEMO, RegionResult, add_recent_model, forget_recent_model, recent_models

logger = logging.getLogger(__name__)

SCOPES = {"Visible region": "visible", "Whole slide": "whole", "Shapes ROI": "roi"}
DEVICES = ("auto", "cuda", "mps", "cpu")
OPEN_ITEM = "Open…"
READY = "Ready: choose what to segment (Scope) and click Segment."
MODEL_VIEW = "what the model saw"  # the image layer of the stain-matched pixels
STAIN_TIP = ("Recolour the slide to the stain the model was trained on before segmenting it (Macenko's "
             "method, fitted once on the whole slide's tissue): for H&E slides from another lab or scanner. "
             "Off: the pixels as stored.")


class SegmentWidget(DFAWidget):
    """Dock widget: model, device, scope, Segment / Cancel, progress with ETA, class legend.

    Arguments:
      napari_viewer: the viewer (napari passes it when the widget is docked).
      parent: optional Qt parent.
    """

    hint = "Open a slide (File > Open, or File > Open Sample > napari-dfa), then click Segment."
    cancelled_text = "Cancelled; the labels are unchanged."

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.cache = RegionCache()
        # Lattice tiles computed for earlier views: a panned view runs only the tiles it adds.
        self.tile_cache = TileCache()
        self._domain_checked: set = set()  # (image, model fingerprint) pairs already checked
        self._domain_worker = None
        self.domain_warning: str | None = None  # the last "slide beyond the model" message
        self.domain_checks_done = 0
        self._stains: dict = {}  # (image, level, model fingerprint) -> the slide's StainMatch
        self._loading: str | None = None  # the model file a running job loads (dropped if it fails)

        # Layer and model file names can be any length: cut in the middle to the field, whole in tooltips.
        self.image_combo = eliding_combo(QComboBox())
        self.model_combo = eliding_combo(QComboBox())
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(list(SCOPES))
        self.match_stain = QCheckBox("Match to the model")
        self.match_stain.setToolTip(STAIN_TIP)
        self._not_he: dict = {}  # image path -> why it is not H&E (found by the domain check)
        self._caveats: dict = {}  # (image path, model fingerprint) -> what exports of its results say
        self.show_matched = QCheckBox("Show what the model saw")
        self.show_matched.setToolTip(
            "Add the slide as the model segmented it: recoloured to its training stain when 'Match to the "
            "model' was ticked for the result, as an image layer under the labels.")
        self.segment_button = QPushButton("Segment")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.legend = QLabel()
        self.legend.setWordWrap(True)

        for combo in (self.image_combo, self.model_combo, self.device_combo, self.scope_combo):
            narrow_combo(combo, chars=4)
        # Segment / Cancel and the progress stay in view under the status line; the choices scroll.
        buttons = QHBoxLayout()
        buttons.addWidget(self.segment_button)
        buttons.addWidget(self.cancel_button)
        self.pinned.addLayout(buttons)
        self.pinned.addWidget(self.progress)
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("Scope", self.scope_combo)
        form.addRow("Stain", self.match_stain)
        form.addRow(self.show_matched)  # the whole row: under the label column it did not fit the dock
        # The device is chosen once if ever ('auto' picks the GPU when there is one).
        self.more_fold = Fold("More options", tip="Where the model runs")
        device = QFormLayout()
        device.addRow("Device", self.device_combo)
        self.more_fold.addLayout(device)
        layout = body_layout(self.body)
        layout.addLayout(form)
        self.scroll.keep_in_view(form)  # what Segment will do is never scrolled away from its button
        layout.addWidget(self.more_fold)
        layout.addWidget(QLabel("<b>Classes</b>"))
        layout.addWidget(self.legend)
        layout.addStretch(1)

        self._fill_models()
        self.model_combo.activated.connect(self._on_model_activated)
        self.image_combo.currentTextChanged.connect(self._offer_stain_match)
        self.show_matched.toggled.connect(lambda on: self.show_model_view(on))
        self.session.result_changed.connect(lambda: self.show_model_view(quiet=True))
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
        self.model_combo.addItem("Demo (bundled)", DEMO)
        versions = [v["source"] for v in self.session.versions]  # fine-tuned ones too (in memory)
        sources = [s for s in [*versions, self.session.model_source, *recent_models()] if s and s != DEMO]
        for src in dict.fromkeys(sources):
            self.model_combo.addItem(Path(src).name, src)
        self.model_combo.addItem(OPEN_ITEM, None)
        want = select or self.session.model_source or DEMO
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
        return self.model_combo.currentData() or DEMO

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
        current = full_text(self.image_combo)
        self.image_combo.clear()
        names = [layer.name for layer in image_layers(self.viewer)]
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentIndex(names.index(current))
        elif names:
            self.image_combo.setCurrentIndex(len(names) - 1)
        if self.status.text() in (self.hint, READY):  # a hint follows what is open; messages stay
            self.status.setText(self.ready_text())

    def ready_text(self) -> str:
        return READY if image_layers(self.viewer) else self.hint

    def _on_model_changed(self) -> None:
        seg = self.session.segmenter
        if seg is None:
            self.legend.setText("<i>no model loaded yet</i>")
            return
        rows = [f'<span style="background-color: rgb{tuple(int(v) for v in col[:3])}">&nbsp;&nbsp;&nbsp;&nbsp;'
                f"</span>&nbsp;{k + 1}&nbsp;{name}" for k, (name, col)
                in enumerate(zip(seg.class_names, seg.class_colors))]
        self.legend.setText("<br>".join(rows))
        # The combo follows the model in use (after a fine-tune, an accept or a roll back).
        if self.session.model_source and self.model_combo.findData(self.session.model_source) < 0:
            self._fill_models(self.session.model_source)
        elif self.session.model_source:
            self.model_combo.setCurrentIndex(self.model_combo.findData(self.session.model_source))

    # --- run -------------------------------------------------------------------------------
    def segment(self):
        """Start segmenting the chosen scope; returns the worker (None when the inputs are bad)."""
        if self.worker is not None:
            return self.worker
        scope = SCOPES[self.scope_combo.currentText()]
        try:
            # an RGB image split into channel layers is segmented as the three together
            pyramid = layer_pyramid(self.viewer, pick_image_layer(self.viewer, full_text(self.image_combo) or None))
            layer = pyramid.layer
            region0 = None
            if scope == "visible":
                region0 = visible_region(self.viewer, pyramid)
            elif scope == "roi":
                region0 = shapes_roi(self.viewer, pyramid)
        except DataError as exc:
            # cleared once an image layer is there (a wrong scope/ROI message stays until the next try)
            self._say(str(exc), error=True, until=lambda: pick_image_layer(self.viewer))
            return None
        source, device = self.model_source(), self.device_combo.currentText()
        match = self.match_stain.isChecked()
        session_model = self.session.segmenter_for(source)  # fine-tuned versions live only in memory
        self._loading = source if session_model is None and source != DEMO else None
        self._say("Loading the model…" if session_model is None else "Segmenting…")

        def work():
            seg = session_model
            if seg is None:
                from ..model import load_model

                seg = load_model(source)
            return self._run(seg, pyramid, scope, region0, device, match), seg

        return self.run_job(work, lambda out: self._on_done(out, source, layer.name, scope))

    def _stain_for(self, pyramid, level: int, seg):
        """Worker thread: the slide's StainMatch to ``seg``'s training stain at ``level``, fitted
        once on the whole level (every view of the slide then gets the same colours)."""
        key = (pyramid.path, level, seg.fingerprint())
        if key not in self._stains:
            from ..inference.stain import slide_stain_match

            data, lv = pyramid.source(level)
            self._stains[key] = slide_stain_match(data, seg, level=lv)
        return self._stains[key]

    def _run(self, seg, pyramid, scope, region0, device, match_stain: bool = False):
        """Worker thread: choose the level, segment, return (result, level, region, stain match)."""
        from ..inference import Runtime, segment
        from ..inference.background import gui_tile_workers

        def progress(done, total, **info):
            self.report_progress(int(done), int(total))

        if scope == "whole":
            level = pyramid.level_for(seg.mpp, (0, 0, *pyramid.shapes[0]))
            stain = self._stain_for(pyramid, level, seg) if match_stain else None
            out = _whole_slide_store(pyramid, level, seg, stain)
            data, lv = pyramid.source(level)
            kwargs = dict(level=lv, region=None, runtime=Runtime(device=device, tile_workers=gui_tile_workers()),
                          out=out, progress=progress, cancel=self.cancelled, stain=stain)
            try:
                # The store is named by slide, level and model weights: a finished one is reused at
                # once, a cancelled one continues from the rows already written.
                res = segment(data, seg, resume=out.exists(), **kwargs)
            except ConfigError:  # written with other settings: start over
                res = segment(data, seg, resume=False, **kwargs)
            return res, level, (0, 0, *pyramid.shapes[level]), stain
        level = pyramid.level_for(seg.mpp, region0)
        # No margin around the view: the tiles of the level's lattice that touch it are read whole,
        # which gives its border pixels their context (and the labels a whole-slide run gives).
        region = pyramid.to_level(level, region0)
        stain = self._stain_for(pyramid, level, seg) if match_stain else None
        image = (pyramid.path, stain.key if stain else None)  # recoloured pixels give other labels
        hit = self.cache.get(image, level, seg, region)
        if hit is not None:
            return CachedRegion(labels=hit), level, region, stain
        data, lv = pyramid.source(level)
        runtime = Runtime(device=device, tile_cache=self.tile_cache, tile_workers=gui_tile_workers())
        res = segment(data, seg, level=lv, region=region, runtime=runtime, progress=progress,
                      cancel=self.cancelled, stain=stain)
        if res.completed:
            self.cache.put(image, level, seg, region, np.asarray(res.labels))
        return res, level, region, stain

    # --- UI thread callbacks ---------------------------------------------------------------
    def _on_progress(self, value) -> None:
        done, total = value
        if not self._eta.due(done, total):
            return
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        if not self.cancelled():
            self._say(f"Segmenting: {self._eta.text(done, total)}")

    def _on_error(self, exc) -> None:
        if isinstance(exc, CheckpointError) and self._loading is not None:
            # A file that is no model leaves the Model list (and the recent files): one message.
            self._drop_model(self._loading)
            self._loading = None
            self._say(f"{exc} It was taken off the Model list.", error=True)
            return
        super()._on_error(exc)

    def _drop_model(self, source: str) -> None:
        forget_recent_model(source)
        index = self.model_combo.findData(source)
        if index >= 0:
            self.model_combo.removeItem(index)
        self.model_combo.setCurrentIndex(max(0, self.model_combo.findData(self.session.model_source or DEMO)))

    def _on_done(self, out, source: str, layer_name: str, scope: str = "visible") -> None:
        (res, level, region, stain), seg = out
        self._loading = None
        if self.session.segmenter is not seg:
            self.session.set_model(seg, source)
            if source != DEMO:
                add_recent_model(source)
        if layer_name not in self.viewer.layers:
            self._say("The image layer was closed while segmenting; result dropped.", error=True)
            return
        pyramid = LayerPyramid(self.viewer.layers[layer_name], placement_only=True)
        scale, translate = pyramid.placement(level, region)
        whole = res.path is not None
        scope = "whole" if whole else scope
        # "demo · view", "demo · slide": short, and distinct in napari's layer list
        name = result_layer_name(self.viewer, image_layer=layer_name, model=source,
                                 model_label=self.session.model_label(source), scope=scope)
        meta = {"napari_dfa": {"image_layer": layer_name, "level": level, "region": list(region),
                               "model": source, "scope": scope,
                               "completed": bool(getattr(res, "completed", True))}}
        caveat = self._caveats.get((pyramid.path, seg.fingerprint()))
        if caveat:  # the domain check warned about this slide and model: its exports say so
            meta["napari_dfa"]["caveat"] = caveat
        if whole:
            data = open_label_pyramid(res)
            data = data if len(data) > 1 else data[0]  # a cancelled run has no display pyramid yet
            labels = put_labels_layer(self.viewer, name, data, scale=scale, translate=translate,
                                      segmenter=seg, multiscale=isinstance(data, list), metadata=meta,
                                      units=pyramid.units)
        else:
            labels = put_labels_layer(self.viewer, name, np.asarray(res.labels), scale=scale,
                                      translate=translate, segmenter=seg, metadata=meta,
                                      units=pyramid.units)
        self.session.set_result(RegionResult(
            image_layer=layer_name, level=level, region=tuple(int(v) for v in region),
            downsample=pyramid.downsamples[level], scale=scale, translate=translate,
            labels_layer=labels.name, whole_slide=whole,
            store_path=str(res.path) if whole else None, stain=stain))
        if getattr(res, "completed", True):
            h, w = region[2], region[3]
            cached = " (from the cache)" if getattr(res, "cached", False) else ""
            demo = " The demo model knows synthetic tissue only." if source == DEMO else ""
            self._say(f"Done{cached}: {h}×{w} px of {layer_name} at level {level} → layer '{labels.name}'.{demo}")
            self._check_domain(layer_pyramid(self.viewer, self.viewer.layers[layer_name]), level, region, seg)
        else:
            self._say(f"Cancelled after {res.tiles_done} of {res.tiles_total} tiles; "
                      "the unfinished part is left unlabelled.")

    def _check_domain(self, pyramid, level: int, region, seg) -> None:
        """Once per (image, model), after the result is on screen: does this slide look like the
        model's training tissue? A separate worker, so the first result is not delayed by it."""
        key = (pyramid.path, seg.fingerprint())
        # Every model: whether the slide is H&E at all needs no training statistics.
        if key in self._domain_checked:
            return
        self._domain_checked.add(key)

        data, lv = pyramid.source(level)

        def work():
            from ..inference.domain import check_slide

            return check_slide(data, seg, level=lv, region=region, n=8)

        def done(report):
            self.domain_checks_done += 1
            if report.not_he:
                self._not_he[pyramid.path] = report.message
                self._offer_stain_match()
            if report.caveat:
                self._caveats[key] = report.caveat
                self._mark_caveat(pyramid.layer.name, seg, report.caveat)
            if report.far:
                text = report.message
                if report.stain_far and not self.match_stain.isChecked():
                    text += ". Tick Stain: 'Match to the model' to recolour it to the model's training stain"
                self.domain_warning = text
                self._say(f"Warning: {text}", error=True)  # shown and notified once

        def failed(exc):  # a check that cannot run must never cost the user their result
            self.domain_checks_done += 1
            logger.info("domain check skipped: %s", exc)

        self._domain_worker = start_worker(work, on_done=done, on_error=failed)

    def _mark_caveat(self, image_layer: str, seg, caveat: str) -> None:
        """Put ``caveat`` on the results of ``image_layer`` by ``seg`` already shown: napari's
        writers (Save layer: GeoJSON, TIFF, OME-Zarr) carry it into the file."""
        from napari.layers import Labels

        for layer in self.viewer.layers:
            md = (layer.metadata or {}).get("napari_dfa") or {}
            if (isinstance(layer, Labels) and md.get("image_layer") == image_layer
                    and self.session.segmenter_for(md.get("model")) is seg):
                md["caveat"] = caveat

    def show_model_view(self, show: bool | None = None, *, quiet: bool = False) -> None:
        """Show the pixels the model segmented for the last result as the image layer
        :data:`MODEL_VIEW` under its labels: the slide recoloured to the model's training stain when
        the result was stain-matched (lazily, level by level), else nothing to add (the model saw
        the slide as stored). ``show`` False (or the box unticked) removes the layer."""
        show = self.show_matched.isChecked() if show is None else show
        if MODEL_VIEW in self.viewer.layers:
            self.viewer.layers.remove(MODEL_VIEW)
        res = self.session.result
        if not show or res is None or res.image_layer not in self.viewer.layers:
            if show and not quiet:
                self._say("Segment first: the layer shows the pixels the model saw for a result.")
            return
        if res.stain is None:
            if not quiet:
                self._say("The model saw this slide as stored (Stain: 'Match to the model' was off for this "
                          "result): what you see is what it segmented.")
            return
        pyramid = layer_pyramid(self.viewer, self.viewer.layers[res.image_layer])
        levels = recoloured_levels(pyramid, res.level, res.region, res.stain, whole=res.whole_slide)
        layer = self.viewer.add_image(levels if len(levels) > 1 else levels[0], name=MODEL_VIEW, rgb=True,
                                      multiscale=len(levels) > 1, scale=res.scale, translate=res.translate,
                                      units=pyramid.units, metadata={"napari_dfa": {"derived": True}})
        if res.labels_layer in self.viewer.layers:  # under the labels, over the slide
            self.viewer.layers.move(self.viewer.layers.index(layer), self.viewer.layers.index(res.labels_layer))
        if not quiet:
            self._say(f"Layer '{MODEL_VIEW}': the slide recoloured to the model's training stain, as it was "
                      "segmented.")

    def _offer_stain_match(self, *_) -> None:
        """The Stain box for the image chosen: not offered for a slide found not to be H&E (matching
        would dress another stain up as H&E)."""
        try:
            path = layer_pyramid(self.viewer, pick_image_layer(self.viewer, full_text(self.image_combo) or None)).path
        except DataError:
            path = None
        why = self._not_he.get(path)
        if why:
            self.match_stain.setChecked(False)
        self.match_stain.setEnabled(not why)
        self.match_stain.setToolTip(f"Not offered: {why}." if why else STAIN_TIP)

    def _set_busy(self, busy: bool) -> None:
        self.segment_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        if busy:
            self.progress.setRange(0, 0)  # busy until the first tile reports
        else:
            self.progress.setRange(0, 1)
            self.progress.setValue(1 if not self.cancelled() else 0)


def _whole_slide_store(pyramid, level: int, seg, stain=None) -> Path:
    """A zarr labels store per (slide, level, model weights, stain match): never shared between
    models, nor between the stored and the recoloured pixels."""
    path = slide_labels_store_path(pyramid.path, level, seg.fingerprint() + ("-stain" if stain else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def open_label_pyramid(res) -> list:
    """The levels of a whole-slide labels store, finest first (level 0 alone until the run
    finished and built the display pyramid)."""
    try:
        levels = label_levels(res.path)
    except DataError:  # not (yet) a complete store: the result's own level 0
        return [res.labels]
    return levels or [res.labels]
