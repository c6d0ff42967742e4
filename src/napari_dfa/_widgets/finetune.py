"""Fine-tune widget: paint corrections by class name, train on them, review what changed, accept.

napari cannot paint multiscale labels (napari #1587), so corrections live in their own
single-scale Labels layer over the region under review, and every stroke is written to the slide's
:class:`~napari_dfa.corrections.CorrectionStore` as it is made. The store belongs to the slide's
content, not its path, and nothing in it is used unseen: the widget lists every saved patch (class,
area, when) as soon as the slide is open, and says so; untick a patch to hide it (it then does not
train), delete it, or export the corrections as QuPath GeoJSON.

The class list is the pathologist's: add, rename, recolour and remove classes; the model learns the
new list at the next fine-tuning (:func:`napari_dfa.model.classes_edit.with_classes`). QuPath
classes the model lacks can be added on import.

Fine-tuning (:func:`napari_dfa.corrections.workflow.finetune_on_corrections`) runs in a thread
worker with a live loss curve. Then the widget shows what changed — a layer of the changed pixels
and the area of every class before → after — with the guard's verdict in plain words, and waits for
Accept or Reject. Every accepted version can be rolled back, in every widget. This widget only
gathers the inputs from the layers (on the UI thread) and shows the outcome.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QColorDialog,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTreeWidget,
    QTreeWidgetItem,
)

from ..classes import default_colors
from ..corrections import CorrectionStore, geojson_classes, matched_names, missing_classes, slide_content_key
from ..corrections.guard import label_map
from ..corrections.workflow import Resegment, default_steps, finetune_on_corrections, write_back
from ..errors import DataError
from ..inference.background import gui_tile_workers
from ..labels import label_levels
from ..files.paths import accepted_labels_store_path
from ._base import DFAWidget, body_layout, eliding_combo, error_text, narrow_combo
from ._fold import Fold
from ._labels_layer import class_colormap, class_features, result_layer_name
from ._layers import (
    labels_shown,
    layer_pyramid,
    pick_image_layer,
    replay_spec,
    review_target,
    visible_region,
    writeback_spec,
)
from ._lossplot import LossPlot
from ._recorder import CorrectionRecorder
from ._session import add_recent_model

logger = logging.getLogger(__name__)

LAYER = "DFA corrections"
REVIEW_LAYER = "DFA changes (review)"
CHANGED_COLOR = (1.0, 0.0, 1.0, 1.0)  # magenta: no class colour uses it
REPLAY_TIP = ("Deep fine-tune only. Replay: also train on a thin sample of the current labels around your "
              "corrections, so the model keeps what it got right where you corrected nothing (it forgets otherwise).")
GUARD_TIP = ("Guard: offer the new model only if it is better on your strokes and confirmed regions held back to "
             "test it, and no verified class got worse; when too little is verified to tell, it says what would "
             "settle it. Untick to judge for yourself: Accept then shows what the change does and asks once.")
CONFIRM_TIP = ("The labels shown over the segmented region (for a whole-slide result: the part in view) are right: "
               "keep them as verified, beside your corrections. They train the next fine-tuning and test it, so "
               "the guard can tell whether the new model got worse where the old one was right.")
DEEP_TIP = ("Off (default): the way to learn is chosen for you. For a class the model never had, or tissue unlike "
            "its training data, the pixel head is fitted on your strokes and confirmed regions, the rest of the "
            "model fixed (seconds; it learns tissue and classes the model never saw); on tissue like the model's "
            "own, in its own classes, the layers after the encoder are fine-tuned. On: always the latter, with "
            "the steps above.")


def _section(text: str) -> QLabel:
    label = QLabel(f"<b>{text}</b>")
    label.setContentsMargins(0, 6, 0, 0)
    return label


def _source_word(source: str) -> str:
    """Where a saved correction came from, in a word (the saved list's first column)."""
    if source.startswith("geojson:"):
        return "QuPath"
    return {"paint": "painted"}.get(source, source)


def _swatch(color) -> QIcon:
    pix = QPixmap(12, 12)
    pix.fill(QColor(*[int(v) for v in color[:3]]))
    return QIcon(pix)


class FinetuneWidget(DFAWidget):
    """Dock widget: class list, correction layer, QuPath import, saved corrections, Fine-tune /
    Cancel, loss curve, review with Accept / Reject, Save model, roll back.

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
        self.pending = None  # FinetuneOutcome under review
        self._asked = None  # the outcome whose Accept already said what it does (the next click accepts)
        self._losses: list[tuple[int, float, float | None]] = []
        self._keys: dict[tuple, str] = {}  # content keys of image layers
        self._announced: set[str] = set()  # stores whose saved corrections were announced
        # The pathologist's class list: [name, colour] in label order, and {model name: new name}.
        self._classes: list[list] = []
        self._renames: dict[str, str] = {}
        self._classes_of = None  # the model the class list was taken from

        # --- corrections and classes
        self.start_button = QPushButton("Correct labels")
        self.start_button.setToolTip("Correct the segmented region: a layer over it to paint the right class where "
                                     "the labels are wrong (every stroke is saved as you paint)")
        self.confirm_button = QPushButton("Looks right")
        self.confirm_button.setToolTip(CONFIRM_TIP)
        self.class_combo = narrow_combo(QComboBox(), chars=4)
        self.class_list = QListWidget()
        self.class_list.setMaximumHeight(110)
        self.add_class_button = QPushButton("Add…")
        self.rename_class_button = QPushButton("Rename…")
        self.color_class_button = QPushButton("Colour…")
        self.remove_class_button = QPushButton("Remove")
        self.apply_classes_button = QPushButton("Apply to the model")
        self.apply_classes_button.setToolTip(
            "Give the model this class list now, without training: renamed and recoloured classes keep what "
            "they learned, removed ones are dropped, a new class gets a token of its own (learnt at the next "
            "fine-tuning). Fine-tuning applies the list too.")
        self.classes_note = QLabel()
        self.classes_note.setWordWrap(True)
        self.import_button = QPushButton("Import QuPath GeoJSON…")
        self.add_missing = QCheckBox("Add missing classes")
        self.add_missing.setToolTip("On import, add the QuPath classes the model does not have to the class list "
                                    "(QuPath's Ignore* class always means 'not corrected')")
        # --- saved corrections
        self.saved_label = QLabel()
        self.saved_label.setWordWrap(True)
        self.saved_list = QTreeWidget()
        self.saved_list.setHeaderLabels(["Use", "Classes (px)", "When", "From"])
        self.saved_list.setRootIsDecorated(False)
        # Narrow dock: the tick and where a patch came from, then its classes (wrapped); when it
        # was saved and its full source are in the row's tooltip (columns 2-3 keep them as data).
        self.saved_list.setWordWrap(True)
        self.saved_list.setColumnHidden(2, True)
        self.saved_list.setColumnHidden(3, True)
        self.saved_list.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.saved_list.setMaximumHeight(110)
        self.saved_list.setToolTip("Every correction saved for this slide. Untick to hide one (a hidden correction "
                                   "does not train); select and Delete to drop it for good.")
        self.saved_list.header().setStretchLastSection(False)
        self.saved_list.header().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.saved_list.header().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.load_button = QPushButton("Show")
        self.delete_button = QPushButton("Delete")
        self.export_button = QPushButton("Export GeoJSON…")
        # --- training
        self.steps = QSpinBox()
        self.steps.setRange(1, 5000)
        self.steps.setValue(default_steps())
        self.steps.setEnabled(False)
        self.steps.setToolTip("Deep fine-tune: optimizer steps, 4 crops a step (256², or 512² when the encoder "
                              "trains too); 200 with a GPU, 40 on a CPU. The pixel head fits in its own 150 steps.")
        self.deep = QCheckBox("Deep fine-tune instead")
        self.deep.setToolTip(DEEP_TIP)
        self.deep.toggled.connect(self._on_deep)
        self.replay = QCheckBox("Replay current labels")
        self.replay.setChecked(True)
        self.replay.setToolTip(REPLAY_TIP)
        self.guard = QCheckBox("Guard: test it first")
        self.guard.setChecked(True)
        self.guard.setToolTip(GUARD_TIP)
        self.train_encoder = QCheckBox("Train the encoder too")
        self.train_encoder.setToolTip(
            "Slower. Deep fine-tune only (ticking it ticks that). Off: only the layers after the encoder train, "
            "on its cached features. On: the encoder trains too, on 512-px crops, about 4x the time.")
        self.train_encoder.toggled.connect(lambda on: on and self.deep.setChecked(True))
        self.finetune_button = QPushButton("Fine-tune")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.loss_plot = LossPlot()
        self.loss_plot.setToolTip("Loss per step: train (line) and on the held-back corrections (dots)")
        # --- review
        self.review_label = QLabel("After fine-tuning, what changed shows here before you accept it.")
        self.review_label.setWordWrap(True)
        self.area_table = QTableWidget(0, 3)
        self.area_table.setHorizontalHeaderLabels(["Class", "Before", "After"])
        self.area_table.verticalHeader().setVisible(False)
        self.area_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        # Shares in the cells (what changed), pixel counts in their tooltips: three columns fit a narrow dock.
        self.area_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        for j in (1, 2):
            self.area_table.horizontalHeader().setSectionResizeMode(j, QHeaderView.ResizeMode.Stretch)
        self.area_table.verticalHeader().setDefaultSectionSize(self.area_table.fontMetrics().height() + 8)
        self.look_list = QListWidget()
        self.look_list.setMaximumHeight(90)
        self.look_list.setToolTip("Where the new model changed most: click one to go there, then confirm it "
                                  "(Looks right) or paint what is wrong.")
        self.look_list.itemClicked.connect(self._go_to)
        self.accept_button = QPushButton("Accept")
        self.reject_button = QPushButton("Reject")
        self.accept_button.setEnabled(False)
        self.reject_button.setEnabled(False)
        # --- versions
        self.save_button = QPushButton("Save model…")
        self.version_combo = narrow_combo(eliding_combo(QComboBox()), chars=4,
                                          tip="Model versions of this session: pick one, then Roll back")
        self.rollback_button = QPushButton("Roll back")
        self.rollback_button.setToolTip("Use the version picked in the list again, in every widget")
        # Refresh the "saved on disk" list shortly after the last stroke, not on every one.
        self._saved_timer = QTimer(self)
        self._saved_timer.setSingleShot(True)
        self._saved_timer.setInterval(300)
        self._saved_timer.timeout.connect(self.refresh_saved)
        self._total_steps = 1

        # In view whatever the dock's height: Fine-tune, what to do with its result, and the
        # versions to go back to. The rest scrolls, in the order of the work; what is used now and
        # then (options, class editing, QuPath files) is folded.
        for row in ((self.finetune_button, self.cancel_button), (self.accept_button, self.reject_button),
                    (self.version_combo, self.rollback_button)):
            line = QHBoxLayout()
            for i, w in enumerate(row):
                line.addWidget(w, 1 if i == 0 else 0)
            self.pinned.addLayout(line)
        layout = body_layout(self.body)
        start = QHBoxLayout()
        start.addWidget(self.start_button, 1)
        start.addWidget(self.confirm_button)
        layout.addLayout(start)
        paint = QHBoxLayout()
        paint.addWidget(QLabel("Paint"))
        paint.addWidget(self.class_combo, 1)
        layout.addLayout(paint)
        layout.addWidget(_section("Review"))
        layout.addWidget(self.review_label)
        layout.addWidget(self.area_table)
        self.look_label = QLabel("Where it changed most (click to go there):")
        self.look_label.setWordWrap(True)
        layout.addWidget(self.look_label)
        layout.addWidget(self.look_list)
        layout.addWidget(_section("Training"))
        layout.addWidget(self.guard)
        layout.addWidget(self.loss_plot)
        self.options_fold = Fold("More options", tip="How the model learns: method, steps, replay")
        steps = QFormLayout()
        steps.addRow("Steps", self.steps)
        for w in (self.deep, self.train_encoder, self.replay):
            self.options_fold.addWidget(w)
        self.options_fold.addLayout(steps)
        layout.addWidget(self.options_fold)
        self.saved_fold = Fold("Saved corrections", open=True, tip="Every correction saved for this slide")
        self.saved_fold.addWidget(self.saved_label)
        self.saved_fold.addWidget(self.saved_list)
        saved = QHBoxLayout()
        for b in (self.load_button, self.delete_button):
            saved.addWidget(b)
        self.saved_fold.addLayout(saved)
        layout.addWidget(self.saved_fold)
        self.classes_fold = Fold("Classes", tip="Add, rename, recolour or remove classes")
        self.classes_fold.addWidget(self.class_list)
        edits = QGridLayout()
        for i, b in enumerate((self.add_class_button, self.rename_class_button, self.color_class_button,
                               self.remove_class_button)):
            edits.addWidget(b, i // 2, i % 2)
        self.classes_fold.addLayout(edits)
        self.classes_fold.addWidget(self.classes_note)
        self.classes_fold.addWidget(self.apply_classes_button)
        layout.addWidget(self.classes_fold)
        self.qupath_fold = Fold("QuPath GeoJSON", tip="Import annotations from QuPath, export corrections to it")
        for w in (self.import_button, self.add_missing, self.export_button):
            self.qupath_fold.addWidget(w)
        layout.addWidget(self.qupath_fold)
        layout.addWidget(self.save_button)
        layout.addStretch(1)
        # Empty until the first fine-tuning: the review says so in words, the table and list wait.
        self.area_table.setVisible(False)
        self._show_look_list(False)

        self.class_combo.currentIndexChanged.connect(self._on_class)
        self.start_button.clicked.connect(self.start_corrections)
        self.confirm_button.clicked.connect(lambda: self.confirm_view())
        self.add_class_button.clicked.connect(self._ask_add_class)
        self.rename_class_button.clicked.connect(self._ask_rename_class)
        self.color_class_button.clicked.connect(self._ask_color_class)
        self.remove_class_button.clicked.connect(lambda: self._selected_class() and self.remove_class(self._selected_class()))
        self.apply_classes_button.clicked.connect(lambda: self.apply_classes())
        self.import_button.clicked.connect(self._ask_geojson)
        self.load_button.clicked.connect(self.load_saved)
        self.delete_button.clicked.connect(lambda: self.delete_saved())
        self.export_button.clicked.connect(self._ask_export)
        self.saved_list.itemChanged.connect(self._on_saved_item)
        self.finetune_button.clicked.connect(self.finetune)
        self.cancel_button.clicked.connect(self.cancel)
        self.accept_button.clicked.connect(self.accept)
        self.reject_button.clicked.connect(self.reject)
        self.save_button.clicked.connect(self._ask_save)
        # (a lambda: `clicked` would pass its `checked` flag as the version index)
        self.rollback_button.clicked.connect(lambda: self.rollback())
        self.session.model_changed.connect(self._on_model_changed)
        self.session.result_changed.connect(self.refresh_saved)
        napari_viewer.layers.events.inserted.connect(self.refresh_saved)
        self._on_model_changed()
        self._draw_losses()
        self.refresh_saved()

    # --- the class list ----------------------------------------------------------------------
    def class_names(self) -> list[str]:
        """The pathologist's class list (labels 1..K of the corrections)."""
        return [n for n, _ in self._classes]

    def class_colors(self) -> list[tuple[int, int, int]]:
        return [tuple(c) for _, c in self._classes]

    def _model_classes(self):
        seg = self.session.segmenter
        return (list(seg.class_names), [tuple(c) for c in seg.class_colors]) if seg is not None else ([], [])

    def classes_changed(self) -> bool:
        """Whether the class list differs from the model's (the next fine-tuning teaches it)."""
        names, colors = self._model_classes()
        return self.class_names() != names or self.class_colors() != colors

    def add_class(self, name: str, color=None) -> bool:
        """Add a class at the end of the list (a new label); False with a message when it cannot be."""
        name = str(name).strip()
        if not name:
            self._say("A class needs a name.", error=True)
            return False
        if name.lower() in [n.lower() for n in self.class_names()]:
            self._say(f"There is a class {name!r} already.", error=True)
            return False
        if color is None:
            used = np.array(self.class_colors() or [(0, 0, 0)], float)
            candidates = default_colors(max(12, 2 * (len(self._classes) + 1)))
            color = max(candidates, key=lambda c: np.min(np.linalg.norm(used - np.array(c, float), axis=1)))
        self._classes.append([name, tuple(int(v) for v in color[:3])])
        self._apply_class_edit({})
        self._say(f"Added the class {name!r}: paint it, then fine-tune to teach it to the model.")
        return True

    def rename_class(self, old: str, new: str) -> bool:
        new = str(new).strip()
        names = self.class_names()
        if old not in names:
            self._say(f"There is no class {old!r}.", error=True)
            return False
        if not new or (new.lower() in [n.lower() for n in names] and new.lower() != old.lower()):
            self._say(f"Cannot rename {old!r} to {new!r}: the name is empty or taken.", error=True)
            return False
        self._classes[names.index(old)][0] = new
        # the model's own name of this class, if it has one, keeps its learned token under the new name
        original = next((k for k, v in self._renames.items() if v == old), old)
        if original in self._model_classes()[0]:
            self._renames[original] = new
            if original == new:
                del self._renames[original]
        self._apply_class_edit({old: new})
        self._say(f"Renamed {old!r} to {new!r}; the model keeps what it learned about it.")
        return True

    def recolor_class(self, name: str, color) -> bool:
        names = self.class_names()
        if name not in names:
            self._say(f"There is no class {name!r}.", error=True)
            return False
        self._classes[names.index(name)][1] = tuple(int(v) for v in color[:3])
        self._apply_class_edit({})
        return True

    def remove_class(self, name: str) -> bool:
        names = self.class_names()
        if name not in names:
            self._say(f"There is no class {name!r}.", error=True)
            return False
        if len(names) == 1:
            self._say("The last class cannot be removed.", error=True)
            return False
        cleared = 0
        store = self._current_store(create=False)
        if store is not None:
            cleared = store.counts_by_name(include_hidden=True).get(name, 0)
        del self._classes[names.index(name)]
        self._renames = {k: v for k, v in self._renames.items() if v != name}
        self._apply_class_edit({})
        self._say(f"Removed the class {name!r}" + (f"; its {cleared} corrected px were cleared." if cleared else "."))
        return True

    def apply_classes(self) -> bool:
        """Make the class list the model's now (a new model version, no training)."""
        from ..corrections.guard import label_map
        from ..model.classes_edit import with_classes

        try:
            seg = self._need_model()
        except DataError as exc:
            self._say(str(exc), error=True)
            return False
        if not self.classes_changed():
            self._say("The model has this class list already.")
            return False
        names, colors, renames = self.class_names(), self.class_colors(), dict(self._renames)
        store = self._current_store()
        counts = store.counts_by_name() if store is not None else {}
        new = with_classes(seg, names, colors, renames=renames or None,
                           corrected_frequencies={n: c for n, c in counts.items() if n not in seg.class_names} or None)
        lut = label_map(seg.class_names, names, renames)
        n = sum(1 for v in self.session.versions if v["label"].startswith("classes")) + 1
        self.session.set_model(new, f"{self.session.model_source} + classes {n}", label=f"classes {n}")
        self.session.bias_changed.emit()
        res = self.session.result
        text = f"The model has the class list now (version 'classes {n}')."
        if res is not None and res.labels_layer in self.viewer.layers:
            layer = self.viewer.layers[res.labels_layer]
            layer.colormap = class_colormap(new.class_colors)
            layer.features = class_features(new.class_names)
            if res.whole_slide:
                text += " Segment again to see the whole slide in it."
            else:
                layer.data = lut[np.asarray(layer.data)]
                if (lut[1:] == 0).any():
                    text += " Pixels of removed classes are unlabelled until you segment again."
        self._say(text)
        return True

    def _apply_class_edit(self, renames: dict[str, str]) -> None:
        """Follow a class edit everywhere: the store's labels (by name), the paint class picker,
        the correction layer's colours and names."""
        store = self._current_store(create=False, reconcile=False)
        if store is not None:
            store.remap_classes(self.class_names(), renames=renames)
        self._show_classes()
        if self.recorder is not None and self.recorder.layer.name in self.viewer.layers:
            layer = self.recorder.layer
            layer.colormap = class_colormap(self.class_colors())
            layer.features = class_features(self.class_names())
            if store is not None:
                layer.events.data.disconnect(self.recorder._on_data)
                layer.data = store.read(self.recorder.patch.key)
                layer.events.data.connect(self.recorder._on_data)
        self.refresh_saved()

    def _show_classes(self) -> None:
        current = self.class_combo.currentText()
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        self.class_list.clear()
        for name, color in self._classes:
            self.class_combo.addItem(_swatch(color), name)
            item = QListWidgetItem(_swatch(color), name)
            self.class_list.addItem(item)
        if current in self.class_names():
            self.class_combo.setCurrentText(current)
        self.class_combo.blockSignals(False)
        self._on_class(self.class_combo.currentIndex())
        changed = self.classes_changed() and self.session.segmenter is not None
        self.classes_note.setText("The class list differs from the model's: the next fine-tuning teaches it "
                                  "(new classes get a new token; renamed ones keep theirs)." if changed else "")
        self.apply_classes_button.setEnabled(changed)

    def _selected_class(self) -> str | None:
        item = self.class_list.currentItem()
        if item is None:
            self._say("Pick a class in the list first.", error=True)
            return None
        return item.text()

    def _ask_add_class(self) -> None:
        name, ok = QInputDialog.getText(self, "Add a class", "Name of the new class:")
        if ok and name:
            color = QColorDialog.getColor(parent=self, title=f"Colour of {name}")
            self.add_class(name, color.getRgb()[:3] if color.isValid() else None)

    def _ask_rename_class(self) -> None:
        old = self._selected_class()
        if old:
            new, ok = QInputDialog.getText(self, "Rename a class", f"New name of {old!r}:", text=old)
            if ok and new:
                self.rename_class(old, new)

    def _ask_color_class(self) -> None:
        name = self._selected_class()
        if name:
            color = QColorDialog.getColor(QColor(*self._classes[self.class_names().index(name)][1]), self,
                                          f"Colour of {name}")
            if color.isValid():
                self.recolor_class(name, color.getRgb()[:3])

    # --- where corrections go ----------------------------------------------------------------
    def _image_pyramid(self):
        res = self.session.result
        name = res.image_layer if res is not None and res.image_layer in self.viewer.layers else None
        return layer_pyramid(self.viewer, pick_image_layer(self.viewer, name))

    def _content_key(self, pyramid) -> str:
        """The slide's content key (two decoded level-0 tiles, shape, mpp), once per layer."""
        cache_key = (pyramid.path, pyramid.shapes[0], id(pyramid.raw[0]), pyramid.mpp)
        if cache_key not in self._keys:
            self._keys[cache_key] = slide_content_key(pyramid.level(0), pyramid.mpp)
        return self._keys[cache_key]

    def store(self, pyramid=None, *, create: bool = True, reconcile: bool = True) -> CorrectionStore:
        """The correction store of the current slide's content (created on first use). Its labels
        follow the class list by name; saved corrections of a class the list lacks add that class
        (and say so) rather than being reinterpreted."""
        pyramid = pyramid or self._image_pyramid()
        store = CorrectionStore.for_slide(pyramid.path, root=self.store_root, create=create,
                                          content=self._content_key(pyramid))
        names = self.class_names()
        if reconcile and store.class_names != names and names:
            used = {n for n, px in store.counts_by_name(include_hidden=True).items() if px}
            extra = [n for n in store.class_names if n in used and n.lower() not in {m.lower() for m in names}]
            for n in extra:
                self._classes.append([n, default_colors(len(self._classes) + 1)[-1]])
            store.remap_classes(self.class_names())
            if extra:
                self._show_classes()
                self._say(f"Saved corrections of this slide use classes the model lacks: {', '.join(extra)}; they "
                          "were added to the class list (remove them or delete those corrections if unwanted).")
        return store

    def _current_store(self, *, create: bool = False, reconcile: bool = True) -> CorrectionStore | None:
        try:
            return self.store(create=create, reconcile=reconcile)
        except DataError:
            return None

    def _review_region(self, pyramid) -> tuple[int, tuple[int, int, int, int]]:
        """(level, region) the correction layer covers: the last segmented region, or for a
        whole-slide result the part of it in view (a whole level is too big to paint in memory)."""
        res = self.session.result
        if res is None:
            raise DataError("Nothing segmented yet: segment a region first, then correct it")
        if not res.whole_slide:
            return res.level, res.region
        return res.level, pyramid.to_level(res.level, visible_region(self.viewer, pyramid))

    def _ready_to_correct(self) -> None:
        self._need_model()
        self._review_region(self._image_pyramid())

    def _ready_to_finetune(self) -> None:
        """Raises DataError while fine-tuning cannot start (no model, slide or corrections)."""
        self._need_model()
        pyramid = self._image_pyramid()
        store = CorrectionStore.for_slide(pyramid.path, root=self.store_root, create=False,
                                          content=self._content_key(pyramid))
        if not store.corrected_pixels():
            raise DataError("no corrections")

    def start_corrections(self):
        """Add (or reopen) the correction layer over the region under review; returns it."""
        try:
            self._need_model()
            pyramid = self._image_pyramid()
            level, region = self._review_region(pyramid)
            store = self.store(pyramid)
        except DataError as exc:
            self._say(str(exc), error=True, until=self._ready_to_correct)
            return None
        patch = store.create_patch(level=level, region=region, downsample=pyramid.downsamples[level])
        store.set_hidden(patch.key, False)
        layer = self._show_patch(store, patch, pyramid)
        self._say("Paint over the wrong labels with the right class; every stroke is saved as you paint.")
        return layer

    def confirm_view(self):
        """"Looks right": keep the labels shown over the region under review as verified (a
        ``confirmed`` patch in the store); returns the patch, or None with a message."""
        try:
            seg = self._need_model()
            pyramid = self._image_pyramid()
            level, region = self._review_region(pyramid)
            res = self.session.result
            if res.labels_layer not in self.viewer.layers:
                raise DataError("The segmented labels layer was closed: segment again, then confirm")
            shown = labels_shown(self.viewer.layers[res.labels_layer], res, region)
            store = self.store(pyramid)
            labels = label_map(seg.class_names, self.class_names(), self._renames)[shown]
            patch = store.confirm_region(level=level, region=region, labels=labels,
                                         downsample=pyramid.downsamples[level])
        except DataError as exc:
            self._say(str(exc), error=True, until=self._ready_to_correct)
            return None
        self.refresh_saved()
        counts = np.bincount(labels.ravel(), minlength=len(self.class_names()) + 1)[1:]
        parts = ", ".join(f"{n} {int(c)} px" for n, c in zip(self.class_names(), counts) if c)
        self._say(f"Confirmed the labels in view as right ({parts or 'no tissue'}). They train the next "
                  "fine-tuning and test it; strokes you paint over them win.")
        return patch

    def load_saved(self):
        """Show every correction patch in use for the current slide (e.g. after a crash)."""
        try:
            self._need_model()
            pyramid = self._image_pyramid()
            store = self.store(pyramid)
        except DataError as exc:
            self._say(str(exc), error=True, until=lambda: (self._need_model(), self._image_pyramid()))
            return []
        shown = [p for p in store.patches() if not store.hidden(p.key)]
        layers = [self._show_patch(store, p, pyramid, name=f"{LAYER} {p.key}" if i else LAYER)
                  for i, p in enumerate(shown)]
        self._say(f"Showing {len(layers)} saved correction patch(es)." if layers
                  else "No corrections in use for this slide.")
        return layers

    def _show_patch(self, store, patch, pyramid, name: str = LAYER):
        scale, translate = pyramid.placement(patch.level, patch.region)
        data = store.read(patch.key)
        if self.recorder is not None and self.recorder.layer.name == name:
            self.recorder.disconnect()
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        layer = self.viewer.add_labels(data, name=name, scale=scale, translate=translate, opacity=0.8,
                                       units=pyramid.units,
                                       colormap=class_colormap(self.class_colors()),
                                       features=class_features(self.class_names()),
                                       metadata={"napari_dfa": {"store": str(store.path), "patch": patch.key}})
        self.recorder = CorrectionRecorder(layer, store, patch, on_write=self._on_write,
                                           on_error=lambda text: self._say(text, error=True))
        layer.brush_size = max(10, min(data.shape) // 20)
        layer.mode = "paint"
        layer.selected_label = self.class_combo.currentIndex() + 1
        self.viewer.layers.selection.active = layer
        self.refresh_saved()
        return layer

    def _on_write(self) -> None:
        self._saved_timer.start()
        self._recheck()  # e.g. "No corrections yet" goes with the first stroke

    def _on_class(self, index: int) -> None:
        if self.recorder is not None and index >= 0 and self.recorder.layer.name in self.viewer.layers:
            self.recorder.layer.selected_label = index + 1
            self.recorder.layer.mode = "paint"

    def set_class(self, name: str) -> None:
        """Pick the paint class by name (case-insensitive)."""
        names = [self.class_combo.itemText(i).lower() for i in range(self.class_combo.count())]
        self.class_combo.setCurrentIndex(names.index(name.lower()))

    def import_geojson(self, path, *, add_missing: bool | None = None):
        """Rasterise a QuPath GeoJSON file of class-annotated polygons into the store and show it.
        Classes the model lacks are added to the class list with ``add_missing`` (default: the
        "Add missing classes" box), else their annotations are skipped and named."""
        add_missing = self.add_missing.isChecked() if add_missing is None else bool(add_missing)
        try:
            self._need_model()
            pyramid = self._image_pyramid()
            res = self.session.result
            level = res.level if res is not None else pyramid.level_for(self.session.segmenter.mpp)
            found = geojson_classes(path)
            matched = matched_names(found, self.class_names())
            missing = missing_classes(found, self.class_names())
            if missing and add_missing:
                for name in missing:
                    self.add_class(name, found[name]["color"])
            store = self.store(pyramid)
            patch, report = store.import_geojson(path, level=level, downsample=pyramid.downsamples[level],
                                                 level_shape=pyramid.shapes[level], class_names=self.class_names(),
                                                 report=True)
        except DataError as exc:
            self._say(str(exc), error=True)
            return None
        for key in report.replaced:  # layers of the patches it replaced show what is gone
            stale = [lyr for lyr in self.viewer.layers
                     if (lyr.metadata.get("napari_dfa") or {}).get("patch") == key and lyr.name != LAYER]
            for lyr in stale:
                self.viewer.layers.remove(lyr)
        layer = self._show_patch(store, patch, pyramid)
        text = f"Imported {Path(path).name}: {int((layer.data > 0).sum())} corrected pixels."
        if matched:
            text += " Read " + ", ".join(f"QuPath's {k} as {v}" for k, v in matched.items()) + "."
        if report.replaced:
            text += (" It replaced the earlier import of the same annotations (same file or QuPath ids), "
                     "so nothing is counted twice.")
        if missing and add_missing:
            text += f" Added the classes {', '.join(missing)}."
        elif missing:
            text += (f" Skipped the classes the model lacks: {', '.join(missing)} (tick 'Add missing classes' to "
                     "add them).")
        others = [why for _, why in report.skipped if "does not know" not in why]
        if others:
            text += f" Skipped {len(others)} other features (e.g. {others[0]})."
        self._say(text)
        return layer

    def _ask_geojson(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import QuPath annotations", str(Path.home()),
                                              "GeoJSON (*.geojson *.json *.gz *.zip);;All files (*)")
        if path:
            self.import_geojson(path)

    # --- saved corrections ----------------------------------------------------------------------
    def refresh_saved(self, event=None) -> None:
        """List the saved corrections of the slide in view (and announce them once per slide)."""
        try:
            pyramid = self._image_pyramid()
            store = CorrectionStore.for_slide(pyramid.path, root=self.store_root, create=False,
                                              content=self._content_key(pyramid))
        except DataError:
            self.saved_list.clear()
            self.saved_label.setText("No corrections saved for this slide yet.")
            return
        except Exception:  # noqa: BLE001 - an unreadable layer must not break the widget
            logger.debug("cannot list saved corrections", exc_info=True)
            return
        infos = [store.info(p.key) for p in store.patches()]
        self.saved_list.blockSignals(True)
        self.saved_list.clear()
        for info in infos:
            when = str(info["updated"] or "")[:16].replace("T", " ")
            item = QTreeWidgetItem([_source_word(info["source"]),
                                    ", ".join(f"{n} {px}" for n, px in info["pixels"].items()) or "(empty)",
                                    when, info["source"]])
            for j in (0, 1):
                item.setToolTip(j, f"{info['source']}, saved {when}" if when else info["source"])
            item.setData(0, Qt.ItemDataRole.UserRole, info["key"])
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(0, Qt.CheckState.Unchecked if info["hidden"] else Qt.CheckState.Checked)
            self.saved_list.addTopLevelItem(item)
        self.saved_list.blockSignals(False)
        total = self._show_saved_total(store, infos)
        key = str(store.path)
        if infos and key not in self._announced:
            self._announced.add(key)
            if self.recorder is None:  # saved before this session: say so, nothing is used unseen
                self._say(f"This slide has {len(infos)} saved correction patch(es) from before ({total} px in use, "
                          "listed under Saved corrections). They train the next fine-tuning unless you untick "
                          "or delete them.")

    def _show_saved_total(self, store, infos=None) -> int:
        """The line above the list: corrected pixels in use per class, and how many are hidden."""
        infos = infos if infos is not None else [store.info(p.key) for p in store.patches()]
        used: dict[str, int] = {}
        for info in infos:
            if not info["hidden"]:
                for n, px in info["pixels"].items():
                    used[n] = used.get(n, 0) + px
        total = sum(used.values())
        hidden = sum(i["hidden"] for i in infos)
        self.saved_label.setToolTip(str(store.path))  # the label itself stays short: a narrow dock
        self.saved_label.setText(f"Saved on disk: {total} px in use"
                                 + (f" — {', '.join(f'{n}: {px}' for n, px in used.items())}" if used else "")
                                 + (f"; {hidden} hidden" if hidden else ""))
        return total

    def _on_saved_item(self, item, column=0) -> None:
        key = item.data(0, Qt.ItemDataRole.UserRole)
        store = self._current_store()
        if store is None or key is None:
            return
        hidden = item.checkState(0) != Qt.CheckState.Checked
        store.set_hidden(key, hidden)
        for layer in self.viewer.layers:
            if (layer.metadata or {}).get("napari_dfa", {}).get("patch") == key:
                layer.visible = not hidden
        # (not refresh_saved: rebuilding the list would delete the item whose signal this is)
        self._show_saved_total(store)
        self._say("Hidden: that correction is kept on disk but does not train." if hidden
                  else "That correction is in use again.")

    def set_saved_used(self, key: str, used: bool) -> None:
        """Tick or untick a saved correction in the list (as a click on its box does)."""
        for i in range(self.saved_list.topLevelItemCount()):
            item = self.saved_list.topLevelItem(i)
            if item.data(0, Qt.ItemDataRole.UserRole) == key:
                item.setCheckState(0, Qt.CheckState.Checked if used else Qt.CheckState.Unchecked)
                return

    def delete_saved(self, keys=None) -> int:
        """Delete saved corrections (default: those selected in the list) from disk and view."""
        if keys is None:
            keys = [it.data(0, Qt.ItemDataRole.UserRole) for it in self.saved_list.selectedItems()]
        store = self._current_store()
        if store is None or not keys:
            self._say("Select saved corrections in the list to delete them.", error=True)
            return 0
        for key in keys:
            for layer in list(self.viewer.layers):
                if (layer.metadata or {}).get("napari_dfa", {}).get("patch") == key:
                    if self.recorder is not None and self.recorder.layer is layer:
                        self.recorder.disconnect()
                        self.recorder = None
                    self.viewer.layers.remove(layer)
            store.delete(key)
        self.refresh_saved()
        self._say(f"Deleted {len(keys)} saved correction(s).")
        return len(keys)

    def export_saved(self, path) -> Path | None:
        """Write the corrections in use as QuPath GeoJSON annotations (level-0 pixels)."""
        store = self._current_store()
        if store is None or not store.corrected_pixels():
            self._say("No corrections in use to export.", error=True)
            return None
        try:
            out = store.export_geojson(path, class_colors=self.class_colors())
        except (OSError, DataError) as exc:
            self._say(f"Could not export to {path}: {error_text(exc)}", error=True)
            return None
        self._say(f"Exported the corrections to {out} (QuPath: File > Import objects).")
        return out

    def _ask_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export corrections as QuPath GeoJSON",
                                              str(Path.home() / "corrections.geojson"), "GeoJSON (*.geojson)")
        if path:
            self.export_saved(path)

    # --- fine-tuning ----------------------------------------------------------------------------
    def finetune(self):
        """Train on every saved correction in use for this slide, then show what changed; returns
        the worker."""
        if self.worker is not None:
            return self.worker
        try:
            seg = self._need_model()
            if self.recorder is not None and self.recorder.dirty and not self.recorder.flush():
                return None  # the recorder said which strokes could not be saved
            pyramid = self._image_pyramid()
            store = self.store(pyramid)
            n_px = store.corrected_pixels()
            if not n_px:
                raise DataError("No corrections yet: pick a class and paint over the wrong labels first")
        except DataError as exc:
            self._say(str(exc), error=True, until=self._ready_to_finetune)
            return None
        self._clear_review()
        # Everything read from napari layers is read here, on the UI thread (layers are not
        # thread-safe); the workflow reads slide pixels and trains in the worker.
        res = self.session.result
        target = review_target(self.viewer, res, self.recorder)
        # The reviewed region: replayed in training (when ticked), and where the guard compares.
        replay = replay_spec(self.viewer, res, target, self.recorder)
        # Labels segmented from recoloured pixels (Segment's Stain box) are corrected, trained on
        # and segmented again on the same recoloured pixels.
        stain = getattr(res, "stain", None)
        read = pyramid.read if stain is None else (lambda level, box: stain(pyramid.read(level, box)))
        more = self._other_slides(store)
        resegment = None
        if target is not None:
            data, lv = pyramid.source(target[0])
            resegment = Resegment(source=data, level=lv, region=target[1], tile_workers=gui_tile_workers(),
                                  stain=stain)
        steps, guard, parent = self.steps.value(), self.guard.isChecked(), self.session.model_source
        classes = {}
        if self.classes_changed():
            classes = dict(class_names=self.class_names(), class_colors=self.class_colors(),
                           renames=dict(self._renames) or None)
        self._losses = []
        self._total_steps = steps
        self._draw_losses()
        self._say(f"Fine-tuning on {n_px} corrected pixels…")
        self._review_target = (target, pyramid)
        method = "deep" if self.deep.isChecked() or self.train_encoder.isChecked() else "auto"
        use_replay = self.replay.isChecked()
        frozen = not self.train_encoder.isChecked()

        def work():
            return finetune_on_corrections(
                # The head fits in its own steps (HEAD_STEPS); the Steps box is the deep fine-tune's.
                seg, store, read, steps=steps if method == "deep" else None, guard=guard, replay=replay,
                resegment=resegment,
                parent_source=parent, slide=pyramid.path, cancel=self.cancelled,
                replay_training=use_replay, frozen_encoder=frozen, method=method, more=more, **classes,
                progress=lambda step, total, **info: self.report_progress(
                    int(step), int(total), info.get("loss"), info.get("val_loss")))

        return self.run_job(work, self._on_finetuned)

    def _other_slides(self, store) -> list:
        """``[(store, read)]`` of the other slides open in this viewer (not ``store``'s) that have
        corrections in use: one model learns from every slide of the session."""
        from ._layers import image_layers

        out, seen = [], {str(store.path)}
        for layer in image_layers(self.viewer):
            try:
                other = layer_pyramid(self.viewer, layer)
                theirs = self.store(other, create=False)
            except DataError:
                continue
            if str(theirs.path) in seen or not theirs.corrected_pixels():
                continue
            seen.add(str(theirs.path))
            out.append((theirs, other.read))
        if out:
            logger.info("fine-tuning on the corrections of %d more slide(s)", len(out))
        return out

    def _on_deep(self, on: bool) -> None:
        """Steps are the deep fine-tune's alone; the encoder trains only in it."""
        self.steps.setEnabled(on)
        if not on and self.train_encoder.isChecked():
            self.train_encoder.setChecked(False)

    def _show_look_next(self, outcome) -> None:
        """The few places where the new model changed most, largest first (click: go there)."""
        self.look_list.clear()
        target, pyramid = getattr(self, "_review_target", (None, None))
        if target is None:
            return
        level, (ry, rx, _, _) = target
        for y, x, h, w, px in outcome.look_next():
            item = QListWidgetItem(f"{px} px at ({(rx + x) * pyramid.downsamples[level]:.0f}, "
                                   f"{(ry + y) * pyramid.downsamples[level]:.0f})")
            item.setToolTip(f"{px} pixels changed there (level-0 x, y of the place); click to go there")
            item.setData(Qt.ItemDataRole.UserRole, (level, (ry + y, rx + x, h, w)))
            self.look_list.addItem(item)
        self._show_look_list(self.look_list.count() > 0)

    def _show_look_list(self, on: bool) -> None:
        self.look_label.setVisible(on)
        self.look_list.setVisible(on)

    def _go_to(self, item) -> None:
        level, (y, x, h, w) = item.data(Qt.ItemDataRole.UserRole)
        _, pyramid = getattr(self, "_review_target", (None, None))
        if pyramid is None:
            return
        scale, translate = pyramid.placement(level, (y, x, h, w))
        self.viewer.camera.center = (translate[0] + h * scale[0] / 2, translate[1] + w * scale[1] / 2)
        ch, cw = self.viewer.canvas.size
        self.viewer.camera.zoom = 0.5 * min(ch / max(1.0, h * scale[0]), cw / max(1.0, w * scale[1]))

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
        self.pending = outcome
        self._draw_losses()
        self._show_review(outcome)
        self._show_look_next(outcome)
        can_accept = outcome.promoted or outcome.needs_confirmation or not outcome.guard
        self.accept_button.setEnabled(can_accept)
        self.reject_button.setEnabled(True)
        if outcome.promoted:
            self._say(f"Fine-tuned ({outcome.scores}). Look at the changes (magenta) and the areas under Review, "
                      "then Accept or Reject.")
        elif outcome.needs_confirmation:
            self._say(outcome.verdict.reason)
        elif not outcome.guard:
            self._say(f"The guard would keep the old model, but it is off: look at the changes, then Accept or "
                      f"Reject. ({outcome.verdict.reason})")
        else:
            self._say(outcome.verdict.reason, error=True)

    def _show_review(self, outcome) -> None:
        """The changed-pixels layer and the per-class areas before → after."""
        self.review_label.setText(outcome.verdict.reason)
        rows = outcome.area_table()
        total_b = max(1, sum(b for _, b, _ in rows))
        total_a = max(1, sum(a for _, _, a in rows))
        self.area_table.setRowCount(len(rows))
        for i, (name, b, a) in enumerate(rows):
            self.area_table.setItem(i, 0, QTableWidgetItem(name))
            for j, (px, total) in ((1, (b, total_b)), (2, (a, total_a))):
                item = QTableWidgetItem(f"{100 * px / total:.1f} %")
                item.setToolTip(f"{px} px of {total}")
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.area_table.setItem(i, j, item)
        self.area_table.setVisible(True)
        self._fit_area_table()
        changed = outcome.changed()
        target, pyramid = getattr(self, "_review_target", (None, None))
        if changed is None or target is None:
            return
        scale, translate = pyramid.placement(*target)
        if REVIEW_LAYER in self.viewer.layers:
            self.viewer.layers.remove(REVIEW_LAYER)
        from napari.utils.colormaps import DirectLabelColormap

        self.viewer.add_labels(changed.astype(np.uint8), name=REVIEW_LAYER, scale=scale, translate=translate,
                               units=pyramid.units, opacity=0.7,
                               colormap=DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0),
                                                                        1: CHANGED_COLOR}),
                               features={"index": [0, 1], "change": ["unchanged", "changed by fine-tuning"]})

    def _fit_area_table(self, most: int = 10) -> None:
        """As tall as its rows (up to ``most``; more scroll): no scroll bar for a few classes."""
        table = self.area_table
        rows = sum(table.rowHeight(i) for i in range(min(table.rowCount(), most)))
        table.setFixedHeight(rows + table.horizontalHeader().sizeHint().height() + 2 * table.frameWidth())

    def _clear_review(self) -> None:
        self.pending = None
        self.look_list.clear()
        self._show_look_list(False)
        self.accept_button.setEnabled(False)
        self.reject_button.setEnabled(False)
        if REVIEW_LAYER in self.viewer.layers:
            self.viewer.layers.remove(REVIEW_LAYER)

    def accept(self, confirm: bool = False) -> bool:
        """Use the model under review from now on, in every widget, and show its labels. A model
        the guard did not promote is accepted at the second click (or with ``confirm``): the first
        says what it does to each class."""
        outcome = self.pending
        if outcome is None:
            self._say("Nothing to accept: fine-tune first.", error=True)
            return False
        if not (outcome.promoted or outcome.needs_confirmation or not outcome.guard):
            self._say("The guard rejected this model: Reject it, and paint or confirm more of what it gets wrong.",
                      error=True)
            return False
        if not outcome.promoted and not confirm and self._asked is not outcome:
            self._asked = outcome
            changes = outcome.class_changes()
            self._say("The guard did not promote this model. In the region under review "
                      + ("it would change " + "; ".join(changes) if changes else "no class share changes by more "
                         "than a quarter") + ". Click Accept again to use it anyway.", error=True)
            return False
        seg = outcome.candidate
        n = sum(1 for v in self.session.versions if "fine-tune" in v["label"]) + 1
        base, old_seg = self.session.model_source, self.session.segmenter
        prov = seg.metadata.setdefault("provenance", {})
        prov.setdefault("guard", {})["kept"] = True
        prov["guard"]["confirmed"] = bool(outcome.needs_confirmation)
        self.session.set_model(seg, f"{base} + fine-tune {n}", label=f"fine-tune {n}")
        self.session.bias_changed.emit()
        if outcome.relabelled is not None:
            try:
                self._show_relabelled(outcome.relabelled, seg, old_seg)
            except DataError as exc:
                self._say(str(exc), error=True)
                return False
        self._clear_review()
        self._say(f"Accepted: the model is now 'fine-tune {n}' in every widget, and the region shows its labels.")
        return True

    def reject(self) -> None:
        """Drop the model under review; the current model stays."""
        self._clear_review()
        self._say("Rejected: the current model stays. Correct more and fine-tune again.")

    def _show_relabelled(self, labels, seg, old_seg) -> None:
        res = self.session.result
        if res is None or res.labels_layer not in self.viewer.layers:
            return
        layer = self.viewer.layers[res.labels_layer]
        target, pyramid = getattr(self, "_review_target", (None, None))
        spec = writeback_spec(self.viewer, res, target)
        if spec is not None:
            # The old model's whole-slide store stays its own (a new session, or Roll back then
            # Segment, shows exactly its labels): the accepted labels go into a copy of it, named by
            # both models, which the layer shows from now on.
            spec.fork_to = accepted_labels_store_path(
                pyramid.path, res.level, seg.fingerprint() + ("-stain" if res.stain is not None else ""),
                old_seg.fingerprint() if old_seg is not None else "none")
            spec.info = dict(class_names=list(seg.class_names), class_colors=[list(c) for c in seg.class_colors],
                             accepted={"model": self.session.model_source, "over": str(res.store_path),
                                       "region": [int(v) for v in target[1]]})
            path = write_back(spec, labels)
            data = label_levels(path)
            layer.data = data if len(data) > 1 else data[0]
            res.store_path = str(path)
        elif not res.whole_slide:
            layer.data = labels
        layer.colormap = class_colormap(seg.class_colors)
        layer.features = class_features(seg.class_names)
        # The layer shows the accepted model's labels now: named and keyed by it ("fine-tune 1 · view").
        md = layer.metadata.setdefault("napari_dfa", {})
        source = self.session.model_source
        layer.name = result_layer_name(self.viewer, image_layer=res.image_layer, model=source,
                                       model_label=self.session.model_label(source),
                                       scope=md.get("scope", "whole" if res.whole_slide else "visible"))
        md["model"] = source
        res.labels_layer = layer.name  # napari may have added " [1]" to a name in use

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
        """Go back to a previous model version (default: the one picked in the list), in every widget."""
        index = self.version_combo.currentIndex() if index is None else index
        if not 0 <= index < len(self.session.versions):
            self._say("No previous model version to roll back to.", error=True)
            return
        v = self.session.versions[index]
        self._clear_review()
        self.session.set_model(v["segmenter"], v["source"])
        self.session.bias_changed.emit()
        self._say(f"Rolled back to {v['label']}; segment again to see its labels.")

    def _on_model_changed(self) -> None:
        seg = self.session.segmenter
        if seg is not None and seg is not self._classes_of:
            # a new model in use: its classes are the list now (a pending edit goes with the old one)
            self._classes_of = seg
            self._classes = [[n, tuple(c)] for n, c in zip(seg.class_names, seg.class_colors)]
            self._renames = {}
            store = self._current_store(create=False)
            if store is not None and store.class_names != self.class_names():
                self.store()  # renumber its labels by name (and keep classes only it has)
        self._show_classes()
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
