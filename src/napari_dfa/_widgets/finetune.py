"""Fine-tune widget: paint corrections by class name, train on them, review what changed, accept.

napari cannot paint multiscale labels (napari #1587), so corrections live in their own
single-scale Labels layer over the region under review, and every stroke is written to the slide's
:class:`~napari_dfa.corrections.CorrectionStore` as it is made. The store belongs to the slide's
content, not its path, and nothing in it is used unseen: the widget lists every saved patch (class,
area, when) as soon as the slide is open, and says so; untick a patch to hide it (it then does not
train), delete it, or export the corrections as QuPath GeoJSON.

The class list is the pathologist's: add, rename, recolour and remove classes
(:class:`~napari_dfa.corrections.classdraft.ClassDraft`); the model learns the new list at the
next fine-tuning, or at once with Apply. QuPath classes the model lacks can be added on import.

Fine-tuning (:func:`napari_dfa.corrections.workflow.finetune_on_corrections`) runs in a thread
worker with a live loss curve. Then the widget shows what changed — a layer of the changed pixels
and the area of every class before → after — with the guard's verdict in plain words, and waits for
Accept or Reject (:attr:`~napari_dfa.corrections.outcome.FinetuneOutcome.acceptable`). Every
accepted version can be rolled back, in every widget. This widget wires its sections
(``_finetune_*``: corrections and their layers, classes, saved corrections, QuPath files,
training, review, versions) and says what happened. (Over 450 lines: one public method per thing a
pathologist does here, which napari, the demo and the tests call; each hands the work to a section
or the core and says in words what happened.)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton

from ..corrections import CorrectionStore
from ..corrections.outcome import next_version
from ..corrections.workflow import finetune_on_corrections
from ..errors import DataError
from ._base import DFAWidget, body_layout
from ._finetune_classes import ClassPanel
from ._finetune_corrections import Corrections
from ._finetune_qupath import QuPathPanel, import_text
from ._finetune_review import ReviewPanel, ask_text, verdict_text
from ._finetune_saved import SavedPanel
from ._finetune_training import TrainingPanel
from ._finetune_versions import VersionsPanel

logger = logging.getLogger(__name__)

CONFIRM_TIP = ("The labels shown over the segmented region (for a whole-slide result: the part in view) are right: "
               "keep them as verified, beside your corrections. They train the next fine-tuning and test it, so "
               "the guard can tell whether the new model got worse where the old one was right.")


def _section(text: str) -> QLabel:
    label = QLabel(f"<b>{text}</b>")
    label.setContentsMargins(0, 6, 0, 0)
    return label


def _row(*widgets, stretch: int = 0) -> QHBoxLayout:
    """Widgets side by side; the one at ``stretch`` takes the width left."""
    line = QHBoxLayout()
    for i, w in enumerate(widgets):
        line.addWidget(w, 1 if i == stretch else 0)
    return line


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
        self.last_finetune = None  # FinetuneResult of the last run
        self.pending = None  # FinetuneOutcome under review
        self._asked = None  # the outcome whose Accept already said what it does (the next click accepts)
        self.corrections = Corrections(napari_viewer, self.session, store_root=store_root, on_write=self._on_write,
                                       on_error=lambda text: self._say(text, error=True), on_adopted=self._adopted)
        # --- the sections; the controls the work goes through are the widget's own too
        self.class_panel = c = ClassPanel(self, say=self._say, add=self.add_class, rename=self.rename_class,
                                          recolor=self.recolor_class, remove=self.remove_class,
                                          apply=self.apply_classes)
        self.saved = s = SavedPanel(napari_viewer, current_store=self.corrections.current_store, say=self._say)
        self.qupath = q = QuPathPanel(self, import_file=self.import_geojson, export_file=self.export_saved)
        self.training = t = TrainingPanel()
        self.review = r = ReviewPanel(napari_viewer)
        self.versions = v = VersionsPanel(self, self.session, say=self._say, need_model=self.corrections.need_model,
                                          before_rollback=self._clear_review)
        self.class_combo, self.classes_note, self.apply_classes_button = (c.class_combo, c.classes_note,
                                                                          c.apply_classes_button)
        self.saved_label, self.saved_list, self.add_missing = s.saved_label, s.saved_list, q.add_missing
        self.steps, self.deep, self.replay, self.guard, self.train_encoder = (t.steps, t.deep, t.replay, t.guard,
                                                                              t.train_encoder)
        self.review_label, self.area_table, self.look_list = r.review_label, r.area_table, r.look_list
        self.save_button, self.version_combo, self.rollback_button = v.save_button, v.version_combo, v.rollback_button
        self.start_button = QPushButton("Correct labels")
        self.start_button.setToolTip("Correct the segmented region: a layer over it to paint the right class where "
                                     "the labels are wrong (every stroke is saved as you paint)")
        self.confirm_button = QPushButton("Looks right")
        self.confirm_button.setToolTip(CONFIRM_TIP)
        self.finetune_button = QPushButton("Fine-tune")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.accept_button = QPushButton("Accept")
        self.reject_button = QPushButton("Reject")
        self.accept_button.setEnabled(False)
        self.reject_button.setEnabled(False)
        # Refresh the "saved on disk" list shortly after the last stroke, not on every one.
        self._saved_timer = QTimer(self)
        self._saved_timer.setSingleShot(True)
        self._saved_timer.setInterval(300)
        self._saved_timer.timeout.connect(self.refresh_saved)

        # In view whatever the dock's height: Fine-tune, what to do with its result, and the
        # versions to go back to. The rest scrolls, in the order of the work; what is used now and
        # then (options, class editing, QuPath files) is folded.
        for row in ((self.finetune_button, self.cancel_button), (self.accept_button, self.reject_button),
                    (self.version_combo, self.rollback_button)):
            self.pinned.addLayout(_row(*row))
        layout = body_layout(self.body)
        layout.addLayout(_row(self.start_button, self.confirm_button))
        layout.addLayout(_row(QLabel("Paint"), self.class_combo, stretch=1))
        layout.addWidget(_section("Review"))
        r.add_to(layout)
        layout.addWidget(_section("Training"))
        t.add_to(layout)
        for w in (s.fold, c.fold, q.fold, self.save_button):
            layout.addWidget(w)
        layout.addStretch(1)

        self.class_combo.currentIndexChanged.connect(self._on_class)
        self.start_button.clicked.connect(self.start_corrections)
        self.confirm_button.clicked.connect(lambda: self.confirm_view())
        s.load_button.clicked.connect(self.load_saved)
        s.delete_button.clicked.connect(lambda: self.delete_saved())
        self.finetune_button.clicked.connect(self.finetune)
        self.cancel_button.clicked.connect(self.cancel)
        self.accept_button.clicked.connect(self.accept)
        self.reject_button.clicked.connect(self.reject)
        self.session.model_changed.connect(self._on_model_changed)
        self.session.result_changed.connect(self.refresh_saved)
        napari_viewer.layers.events.inserted.connect(self.refresh_saved)
        self._on_model_changed()
        t.draw()
        self.refresh_saved()

    # what the tests and the other sections reach through the widget
    store_root = property(lambda self: self.corrections.store_root)
    recorder = property(lambda self: self.corrections.recorder)
    draft = property(lambda self: self.corrections.draft)
    _renames = property(lambda self: self.corrections.draft.renames)
    _losses = property(lambda self: self.training.losses)

    def _image_pyramid(self):
        return self.corrections.pyramid()

    def store(self, pyramid=None, *, create: bool = True, reconcile: bool = True) -> CorrectionStore:
        """The correction store of the current slide's content (created on first use). Its labels
        follow the class list by name; saved corrections of a class the list lacks add that class
        (and say so) rather than being reinterpreted."""
        return self.corrections.store(pyramid, create=create, reconcile=reconcile)

    def _adopted(self, extra: list[str]) -> None:
        self._show_classes()
        self._say(f"Saved corrections of this slide use classes the model lacks: {', '.join(extra)}; they "
                  "were added to the class list (remove them or delete those corrections if unwanted).")

    # --- the class list: the draft is edited, the store and the layers follow -----------------
    def class_names(self) -> list[str]:
        """The pathologist's class list (labels 1..K of the corrections)."""
        return self.draft.names()

    def class_colors(self) -> list[tuple[int, int, int]]:
        return self.draft.colors()

    def classes_changed(self) -> bool:
        """Whether the class list differs from the model's (the next fine-tuning teaches it)."""
        return self.draft.changed

    def _refused(self, exc: DataError) -> bool:
        self._say(str(exc), error=True)
        return False

    def add_class(self, name: str, color=None) -> bool:
        """Add a class at the end of the list (a new label); False with a message when it cannot be."""
        try:
            name = self.draft.add(name, color)
        except DataError as exc:
            return self._refused(exc)
        self._apply_class_edit({})
        self._say(f"Added the class {name!r}: paint it, then fine-tune to teach it to the model.")
        return True

    def rename_class(self, old: str, new: str) -> bool:
        try:
            new = self.draft.rename(old, new)
        except DataError as exc:
            return self._refused(exc)
        self._apply_class_edit({old: new})
        self._say(f"Renamed {old!r} to {new!r}; the model keeps what it learned about it.")
        return True

    def recolor_class(self, name: str, color) -> bool:
        try:
            self.draft.recolor(name, color)
        except DataError as exc:
            return self._refused(exc)
        self._apply_class_edit({})
        return True

    def remove_class(self, name: str) -> bool:
        try:
            self.draft.check_removable(name)
        except DataError as exc:
            return self._refused(exc)
        store = self.corrections.current_store()
        cleared = store.counts_by_name(include_hidden=True).get(name, 0) if store is not None else 0
        self.draft.remove(name)
        self._apply_class_edit({})
        self._say(f"Removed the class {name!r}" + (f"; its {cleared} corrected px were cleared." if cleared else "."))
        return True

    def apply_classes(self) -> bool:
        """Make the class list the model's now (a new model version, no training)."""
        try:
            seg = self.corrections.need_model()
        except DataError as exc:
            return self._refused(exc)
        if not self.draft.changed:
            self._say("The model has this class list already.")
            return False
        store = self.corrections.current_store()
        lut = self.draft.label_map()
        new = self.draft.apply(seg, store.counts_by_name() if store is not None else {})
        label = next_version([v["label"] for v in self.session.versions], "classes")
        self.session.set_model(new, f"{self.session.model_source} + {label}", label=label)
        self.session.bias_changed.emit()
        self._say(f"The model has the class list now (version '{label}')."
                  + self.review.show_classes_applied(self.session.result, new, lut))
        return True

    def _apply_class_edit(self, renames: dict[str, str]) -> None:
        """Follow a class edit everywhere: the store's labels (by name), the paint class picker,
        the correction layer's colours and names, the saved list."""
        self.corrections.follow_classes(renames)
        self._show_classes()
        self.refresh_saved()

    def _show_classes(self) -> None:
        self.class_panel.show(self.draft, has_model=self.session.segmenter is not None)
        self._on_class(self.class_combo.currentIndex())

    def _on_class(self, index: int) -> None:
        self.corrections.paint_with(index + 1)

    def set_class(self, name: str) -> None:
        """Pick the paint class by name (case-insensitive)."""
        self.class_panel.pick(name)

    # --- corrections: painted, confirmed, imported --------------------------------------------
    def start_corrections(self):
        """Add (or reopen) the correction layer over the region under review; returns it."""
        try:
            layer = self.corrections.start()
        except DataError as exc:
            self._say(str(exc), error=True, until=self.corrections.ready_to_correct)
            return None
        self.refresh_saved()
        self._say("Paint over the wrong labels with the right class; every stroke is saved as you paint.")
        return layer

    def confirm_view(self):
        """"Looks right": keep the labels shown over the region under review as verified (a
        ``confirmed`` patch in the store); returns the patch, or None with a message."""
        try:
            patch, labels = self.corrections.confirm()
        except DataError as exc:
            self._say(str(exc), error=True, until=self.corrections.ready_to_correct)
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
            layers = self.corrections.load()
        except DataError as exc:
            self._say(str(exc), error=True, until=lambda: (self.corrections.need_model(), self._image_pyramid()))
            return []
        self.refresh_saved()
        self._say(f"Showing {len(layers)} saved correction patch(es)." if layers
                  else "No corrections in use for this slide.")
        return layers

    def _on_write(self) -> None:
        self._saved_timer.start()
        self._recheck()  # e.g. "No corrections yet" goes with the first stroke

    def import_geojson(self, path, *, add_missing: bool | None = None):
        """Rasterise a QuPath GeoJSON file of class-annotated polygons into the store and show it.
        Classes the model lacks are added to the class list with ``add_missing`` (default: the
        "Add missing classes" box), else their annotations are skipped and named."""
        add_missing = self.add_missing.isChecked() if add_missing is None else bool(add_missing)
        try:
            done = self.corrections.import_geojson(path, add_missing=add_missing, add_class=self.add_class)
        except DataError as exc:
            self._say(str(exc), error=True)
            return None
        self.refresh_saved()
        self._say(import_text(path, done))
        return done.layer

    # --- saved corrections ----------------------------------------------------------------------
    def refresh_saved(self, event=None) -> None:
        """List the saved corrections of the slide in view (and announce them once per slide)."""
        try:
            store = self.store(create=False, reconcile=False)
        except DataError:
            self.saved.show(None)
            return
        except Exception:  # noqa: BLE001 - an unreadable layer must not break the widget
            logger.debug("cannot list saved corrections", exc_info=True)
            return
        # saved before this session (no correction layer yet): say so, nothing is used unseen
        self.saved.show(store, announce=self.recorder is None)

    def set_saved_used(self, key: str, used: bool) -> None:
        """Tick or untick a saved correction in the list (as a click on its box does)."""
        self.saved.set_used(key, used)

    def delete_saved(self, keys=None) -> int:
        """Delete saved corrections (default: those selected in the list) from disk and view."""
        keys = self.saved.selected_keys() if keys is None else keys
        store = self.corrections.current_store()
        if store is None or not keys:
            self._say("Select saved corrections in the list to delete them.", error=True)
            return 0
        self.corrections.delete(store, keys)
        self.refresh_saved()
        self._say(f"Deleted {len(keys)} saved correction(s).")
        return len(keys)

    def export_saved(self, path) -> Path | None:
        """Write the corrections in use as QuPath GeoJSON annotations (level-0 pixels)."""
        return self.saved.export(path, self.class_colors())

    # --- fine-tuning ----------------------------------------------------------------------------
    def finetune(self):
        """Train on every saved correction in use for this slide, then show what changed; returns
        the worker."""
        if self.worker is not None:
            return self.worker
        try:
            seg = self.corrections.need_model()
            if self.recorder is not None and self.recorder.dirty and not self.recorder.flush():
                return None  # the recorder said which strokes could not be saved
            pyramid = self._image_pyramid()
            store = self.store(pyramid)
            n_px = store.corrected_pixels()
            if not n_px:
                raise DataError("No corrections yet: pick a class and paint over the wrong labels first")
        except DataError as exc:
            self._say(str(exc), error=True, until=self.corrections.ready_to_finetune)
            return None
        self._clear_review()
        # Everything read from napari layers is read here, on the UI thread (layers are not
        # thread-safe); the workflow reads slide pixels and trains in the worker.
        inputs = self.corrections.training_inputs(store, pyramid)
        self.review.target = (inputs.pop("target"), pyramid)
        settings, classes, parent = self.training.settings(), self.draft.edit(), self.session.model_source
        self.training.start()
        self._say(f"Fine-tuning on {n_px} corrected pixels…")

        def work():
            return finetune_on_corrections(
                seg, store, parent_source=parent, slide=pyramid.path, cancel=self.cancelled, **inputs, **settings,
                **classes, progress=lambda step, total, **info: self.report_progress(
                    int(step), int(total), info.get("loss"), info.get("val_loss")))

        return self.run_job(work, self._on_finetuned)

    def _on_progress(self, value) -> None:
        step, total, loss, val = value
        self.training.record(step, total, loss, val)
        if not self._eta.due(step, total):
            return
        self.training.draw()
        if not self.cancelled():
            self._say(f"Fine-tuning: step {self._eta.text(step, total)}")

    def _on_finetuned(self, outcome) -> None:
        self.last_finetune = outcome.result
        self.pending = outcome
        self.training.draw()
        self.review.show(outcome)
        self.accept_button.setEnabled(outcome.acceptable)
        self.reject_button.setEnabled(True)
        text, warning = verdict_text(outcome)
        self._say(text, error=warning)

    def _clear_review(self) -> None:
        self.pending = None
        self.review.clear()
        self.accept_button.setEnabled(False)
        self.reject_button.setEnabled(False)

    def accept(self, confirm: bool = False) -> bool:
        """Use the model under review from now on, in every widget, and show its labels. A model
        the guard did not promote is accepted at the second click (or with ``confirm``): the first
        says what it does to each class."""
        outcome = self.pending
        if outcome is None:
            self._say("Nothing to accept: fine-tune first.", error=True)
            return False
        if not outcome.acceptable:
            self._say("The guard rejected this model: Reject it, and paint or confirm more of what it gets wrong.",
                      error=True)
            return False
        if not outcome.promoted and not confirm and self._asked is not outcome:
            self._asked = outcome
            self._say(ask_text(outcome), error=True)
            return False
        base, old_seg = self.session.model_source, self.session.segmenter
        seg = outcome.accept()
        label = next_version([v["label"] for v in self.session.versions], "fine-tune")
        self.session.set_model(seg, f"{base} + {label}", label=label)
        self.session.bias_changed.emit()
        if outcome.relabelled is not None:
            try:
                self.review.show_accepted(self.session, outcome.relabelled, seg, old_seg)
            except DataError as exc:
                self._say(str(exc), error=True)
                return False
        self._clear_review()
        self._say(f"Accepted: the model is now '{label}' in every widget, and the region shows its labels.")
        return True

    def reject(self) -> None:
        """Drop the model under review; the current model stays."""
        self._clear_review()
        self._say("Rejected: the current model stays. Correct more and fine-tune again.")

    def _set_busy(self, busy: bool) -> None:
        self.finetune_button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        self.rollback_button.setEnabled(not busy)

    # --- model versions ----------------------------------------------------------------------------
    def save_model(self, path) -> Path | None:
        """Write the current model with its provenance (parent, corrections, scores)."""
        return self.versions.save(path)

    def rollback(self, index: int | None = None) -> None:
        """Go back to a previous model version (default: the one picked in the list), in every widget."""
        self.versions.rollback(index)

    def _on_model_changed(self) -> None:
        self.corrections.follow_model()
        self._show_classes()
        self.versions.show()
