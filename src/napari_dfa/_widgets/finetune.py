"""Fine-tune widget: paint corrections by class name, train on them, see the region change.

napari cannot paint multiscale labels (napari #1587), so corrections live in their own
single-scale Labels layer over the region under review, and every stroke is written to the slide's
:class:`~napari_dfa.corrections.CorrectionStore` as it is made. Fine-tuning
(:func:`napari_dfa.corrections.workflow.finetune_on_corrections`) runs in a thread worker with a
live loss curve; the new model is kept only when it does not score worse on held-out corrections
(unless that guard is switched off), then the region is segmented again so the change shows. This
widget only gathers the inputs from the layers (on the UI thread) and shows the outcome. Every
version can be rolled back.
"""

from __future__ import annotations

import logging
from pathlib import Path

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from ..corrections import CorrectionStore
from ..corrections.workflow import Resegment, default_steps, finetune_on_corrections
from ..errors import DataError
from ._base import DFAWidget, error_text
from ._labels_layer import class_colormap, class_features
from ._layers import LayerPyramid, pick_image_layer, replay_spec, review_target, visible_region, writeback_spec
from ._lossplot import LossPlot
from ._recorder import CorrectionRecorder
from ._session import add_recent_model

logger = logging.getLogger(__name__)

LAYER = "DFA corrections"


class FinetuneWidget(DFAWidget):
    """Dock widget: class picker, correction layer, QuPath import, Fine-tune / Cancel, loss curve,
    Save model, roll back.

    Arguments:
      napari_viewer: the viewer (napari passes it when the widget is docked).
      parent: optional Qt parent.
      store_root: folder of the correction stores (default: the napari-dfa cache folder).
    """

    hint = "Segment a region, then correct it here."
    cancelling_text = "Cancelling after the current step…"
    cancelled_text = "Fine-tuning cancelled; the model is unchanged."

    def __init__(self, napari_viewer, parent=None, *, store_root=None):
        super().__init__(napari_viewer, parent)
        self.store_root = store_root
        self.recorder: CorrectionRecorder | None = None
        self.last_finetune = None  # FinetuneResult of the last run
        self._losses: list[tuple[int, float, float | None]] = []

        self.class_combo = QComboBox()
        self.start_button = QPushButton("Correct the segmented region")
        self.import_button = QPushButton("Import QuPath GeoJSON…")
        self.load_button = QPushButton("Show saved corrections")
        self.saved_label = QLabel()
        self.saved_label.setWordWrap(True)
        self.steps = QSpinBox()
        self.steps.setRange(1, 5000)
        self.steps.setValue(default_steps())
        self.steps.setToolTip("Optimizer steps (batch 4, crop 256). Default: 200 with a GPU; 40 on a CPU, "
                              "which shows a painted correction in well under 30 s (benchmarks/bench_gui.py)")
        self.guard = QCheckBox("Keep the new model only if it is not worse on held-out corrections")
        self.guard.setChecked(True)
        self.replay = QCheckBox("Replay the current labels elsewhere (against forgetting)")
        self.replay.setChecked(True)
        self.finetune_button = QPushButton("Fine-tune")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.loss_plot = LossPlot()
        # Refresh the "saved on disk" count shortly after the last stroke, not on every one.
        self._saved_timer = QTimer(self)
        self._saved_timer.setSingleShot(True)
        self._saved_timer.setInterval(300)
        self._saved_timer.timeout.connect(self._show_saved)
        self._total_steps = 1
        self.save_button = QPushButton("Save model…")
        self.version_combo = QComboBox()
        self.rollback_button = QPushButton("Roll back")

        form = QFormLayout()
        form.addRow("Paint class", self.class_combo)
        form.addRow("Steps", self.steps)
        run = QHBoxLayout()
        run.addWidget(self.finetune_button)
        run.addWidget(self.cancel_button)
        versions = QHBoxLayout()
        versions.addWidget(self.version_combo, 1)
        versions.addWidget(self.rollback_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.start_button)
        layout.addLayout(form)
        imports = QHBoxLayout()
        imports.addWidget(self.import_button)
        imports.addWidget(self.load_button)
        layout.addLayout(imports)
        layout.addWidget(self.saved_label)
        layout.addWidget(self.replay)
        layout.addWidget(self.guard)
        layout.addLayout(run)
        layout.addWidget(self.loss_plot)
        layout.addWidget(self.status)
        layout.addWidget(self.save_button)
        layout.addWidget(QLabel("Model versions"))
        layout.addLayout(versions)
        layout.addStretch(1)

        self.class_combo.currentIndexChanged.connect(self._on_class)
        self.start_button.clicked.connect(self.start_corrections)
        self.import_button.clicked.connect(self._ask_geojson)
        self.load_button.clicked.connect(self.load_saved)
        self.finetune_button.clicked.connect(self.finetune)
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(self._ask_save)
        # (a lambda: `clicked` would pass its `checked` flag as the version index)
        self.rollback_button.clicked.connect(lambda: self.rollback())
        self.session.model_changed.connect(self._on_model_changed)
        self.session.result_changed.connect(self._show_saved)
        napari_viewer.layers.events.inserted.connect(self._show_saved)
        self._on_model_changed()
        self._draw_losses()
        self._show_saved()

    # --- where corrections go ----------------------------------------------------------------
    def _image_pyramid(self) -> LayerPyramid:
        res = self.session.result
        name = res.image_layer if res is not None and res.image_layer in self.viewer.layers else None
        return LayerPyramid(pick_image_layer(self.viewer, name))

    def store(self, pyramid: LayerPyramid | None = None) -> CorrectionStore:
        """The correction store of the current slide (created on first use)."""
        pyramid = pyramid or self._image_pyramid()
        names = self.session.segmenter.class_names if self.session.segmenter is not None else None
        return CorrectionStore.for_slide(pyramid.path, root=self.store_root, class_names=names)

    def _review_region(self, pyramid) -> tuple[int, tuple[int, int, int, int]]:
        """(level, region) the correction layer covers: the last segmented region, or for a
        whole-slide result the part of it in view (a whole level is too big to paint in memory)."""
        res = self.session.result
        if res is None:
            raise DataError("Nothing segmented yet: segment a region first, then correct it")
        if not res.whole_slide:
            return res.level, res.region
        return res.level, pyramid.to_level(res.level, visible_region(self.viewer, pyramid))

    def start_corrections(self):
        """Add (or reopen) the correction layer over the region under review; returns it."""
        try:
            self._need_model()
            pyramid = self._image_pyramid()
            level, region = self._review_region(pyramid)
            store = self.store(pyramid)
        except DataError as exc:
            self._say(str(exc), error=True)
            return None
        patch = store.create_patch(level=level, region=region, downsample=pyramid.downsamples[level])
        layer = self._show_patch(store, patch, pyramid)
        self._say("Paint over the wrong labels with the right class; every stroke is saved as you paint.")
        return layer

    def load_saved(self):
        """Show every correction patch saved for the current slide (e.g. after a crash)."""
        try:
            self._need_model()
            pyramid = self._image_pyramid()
            store = self.store(pyramid)
        except DataError as exc:
            self._say(str(exc), error=True)
            return []
        layers = [self._show_patch(store, p, pyramid, name=f"{LAYER} {p.key}" if i else LAYER)
                  for i, p in enumerate(store.patches())]
        self._say(f"Showing {len(layers)} saved correction patch(es)." if layers
                  else "No corrections saved for this slide yet.")
        return layers

    def _show_patch(self, store, patch, pyramid, name: str = LAYER):
        seg = self.session.segmenter
        scale, translate = pyramid.placement(patch.level, patch.region)
        data = store.read(patch.key)
        if self.recorder is not None and self.recorder.layer.name == name:
            self.recorder.disconnect()
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = self.viewer.add_labels(data, name=name, scale=scale, translate=translate, opacity=0.8,
                                       units=pyramid.units,
                                       colormap=class_colormap(seg.class_colors),
                                       features=class_features(seg.class_names),
                                       metadata={"napari_dfa": {"store": str(store.path), "patch": patch.key}})
        self.recorder = CorrectionRecorder(layer, store, patch, on_write=self._saved_timer.start)
        layer.brush_size = max(10, min(data.shape) // 20)
        layer.mode = "paint"
        layer.selected_label = self.class_combo.currentIndex() + 1
        self.viewer.layers.selection.active = layer
        self._show_saved()
        return layer

    def _on_class(self, index: int) -> None:
        if self.recorder is not None and index >= 0:
            self.recorder.layer.selected_label = index + 1
            self.recorder.layer.mode = "paint"

    def set_class(self, name: str) -> None:
        """Pick the paint class by name (case-insensitive)."""
        names = [self.class_combo.itemText(i).lower() for i in range(self.class_combo.count())]
        self.class_combo.setCurrentIndex(names.index(name.lower()))

    def import_geojson(self, path):
        """Rasterise a QuPath GeoJSON file of class-annotated polygons into the store and show it."""
        try:
            self._need_model()
            pyramid = self._image_pyramid()
            res = self.session.result
            level = res.level if res is not None else pyramid.level_for(self.session.segmenter.mpp)
            store = self.store(pyramid)
            patch = store.import_geojson(path, level=level, downsample=pyramid.downsamples[level],
                                         level_shape=pyramid.shapes[level])
        except DataError as exc:
            self._say(str(exc), error=True)
            return None
        layer = self._show_patch(store, patch, pyramid)
        self._say(f"Imported {Path(path).name}: {int((layer.data > 0).sum())} corrected pixels.")
        return layer

    def _ask_geojson(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import QuPath annotations", str(Path.home()),
                                              "GeoJSON (*.geojson *.json);;All files (*)")
        if path:
            self.import_geojson(path)

    def _show_saved(self, event=None) -> None:
        try:
            pyramid = self._image_pyramid()
            store = CorrectionStore.for_slide(pyramid.path, root=self.store_root, create=False)
        except DataError:
            self.saved_label.setText("No corrections saved for this slide yet.")
            return
        counts = store.counts()
        names = self.session.segmenter.class_names if self.session.segmenter is not None else store.class_names
        parts = [f"{names[k - 1] if k - 1 < len(names) else k}: {n}" for k, n in sorted(counts.items())]
        self.saved_label.setText(f"Saved on disk ({store.path.name}): {sum(counts.values())} px"
                                 + (f" — {', '.join(parts)}" if parts else ""))

    # --- fine-tuning ----------------------------------------------------------------------------
    def finetune(self):
        """Train on every saved correction of this slide, then re-segment; returns the worker."""
        if self.worker is not None:
            return self.worker
        try:
            seg = self._need_model()
            if self.recorder is not None and self.recorder.dirty:
                self.recorder.flush()
            pyramid = self._image_pyramid()
            store = self.store(pyramid)
            n_px = store.corrected_pixels()
            if not n_px:
                raise DataError("No corrections yet: pick a class and paint over the wrong labels first")
        except DataError as exc:
            self._say(str(exc), error=True)
            return None
        # Everything read from napari layers is read here, on the UI thread (layers are not
        # thread-safe); the workflow reads slide pixels and trains in the worker.
        res = self.session.result
        target = review_target(self.viewer, res, self.recorder)
        replay = replay_spec(self.viewer, res, target, self.recorder) if self.replay.isChecked() else None
        writeback = writeback_spec(self.viewer, res, target)
        resegment = None
        if target is not None:
            data, lv = pyramid.source(target[0])
            resegment = Resegment(source=data, level=lv, region=target[1])
        steps, guard, parent = self.steps.value(), self.guard.isChecked(), self.session.model_source
        self._losses = []
        self._total_steps = steps
        self._draw_losses()
        self._say(f"Fine-tuning on {n_px} corrected pixels…")

        def work():
            return finetune_on_corrections(
                seg, store, pyramid.read, steps=steps, guard=guard, replay=replay, resegment=resegment,
                writeback=writeback, parent_source=parent,
                slide=pyramid.path, cancel=self.cancelled,
                progress=lambda step, total, **info: self.report_progress(
                    int(step), int(total), info.get("loss"), info.get("val_loss")))

        return self.run_job(work, self._on_finetuned)

    def _on_progress(self, value) -> None:
        step, total, loss, val = value
        if loss is not None:
            # val_loss is repeated between evaluations: keep a point only when it was re-measured
            prev = next((v for _, _, v in reversed(self._losses) if v is not None), None)
            val = None if val is None or (prev is not None and float(val) == prev) else float(val)
            self._losses.append((step, float(loss), val))
        self._total_steps = total
        if not self._eta.due(step, total):
            return
        self._draw_losses()
        if not self.cancelled():
            self._say(f"Fine-tuning: step {self._eta.text(step, total)}")

    def _on_finetuned(self, outcome) -> None:
        self.last_finetune = outcome.result
        self._draw_losses()
        if not outcome.kept:
            self._say(outcome.message, error=True)
            return
        n = sum(1 for v in self.session.versions if "fine-tune" in v["label"]) + 1
        self.session.set_model(outcome.segmenter, f"{self.session.model_source} + fine-tune {n}",
                               label=f"fine-tune {n}")
        self.session.bias_changed.emit()
        if outcome.relabelled is not None:
            self._show_relabelled(outcome.relabelled)
        self._say(outcome.message)

    def _show_relabelled(self, labels) -> None:
        res = self.session.result
        if res is None or res.labels_layer not in self.viewer.layers:
            return
        layer = self.viewer.layers[res.labels_layer]
        if res.whole_slide:
            layer.refresh()  # the worker wrote the patch into the store's levels
        else:
            layer.data = labels

    def _set_busy(self, busy: bool) -> None:
        self.finetune_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        self.rollback_button.setEnabled(not busy)

    def _draw_losses(self) -> None:
        self.loss_plot.set_data([(s, v) for s, v, _ in self._losses],
                                [(s, v) for s, _, v in self._losses if v is not None], self._total_steps)

    # --- model versions ----------------------------------------------------------------------------
    def save_model(self, path) -> Path | None:
        """Write the current model with its provenance (parent, corrections, scores)."""
        try:
            seg = self._need_model()
            out = seg.save(path, provenance=dict(seg.metadata.get("provenance") or {}))
        except Exception as exc:  # a full disk or a bad path must not crash napari
            self._say(f"Could not save {path}: {error_text(exc)}", error=True)
            return None
        add_recent_model(str(out))
        self._say(f"Saved {out}.")
        return Path(out)

    def _ask_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the fine-tuned model", str(Path.home() / "dfa-finetuned.safetensors"),
                                              "napari-dfa models (*.safetensors)")
        if path:
            self.save_model(path if path.endswith(".safetensors") else path + ".safetensors")

    def rollback(self, index: int | None = None) -> None:
        """Go back to a previous model version (default: the one picked in the list)."""
        index = self.version_combo.currentIndex() if index is None else index
        if not 0 <= index < len(self.session.versions):
            self._say("No previous model version to roll back to.", error=True)
            return
        v = self.session.versions[index]
        self.session.set_model(v["segmenter"], v["source"])
        self.session.bias_changed.emit()
        self._say(f"Rolled back to {v['label']}; segment again to see its labels.")

    def _on_model_changed(self) -> None:
        seg = self.session.segmenter
        current = self.class_combo.currentText()
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        if seg is not None:
            self.class_combo.addItems(list(seg.class_names))
            if current in seg.class_names:
                self.class_combo.setCurrentText(current)
        self.class_combo.blockSignals(False)
        self.version_combo.clear()
        for v in self.session.versions:
            self.version_combo.addItem(v["label"])
        current = [i for i, v in enumerate(self.session.versions) if v["segmenter"] is seg]
        if current:
            self.version_combo.setCurrentIndex(current[0])

    def _need_model(self):
        if self.session.segmenter is None:
            raise DataError("No model yet: segment with a model in the Segment widget first")
        return self.session.segmenter
