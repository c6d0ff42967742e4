"""The Fine-tune widget's review (Qt and napari layers): what a fine-tuning changed in the region
under review — a layer of the changed pixels (magenta), the share of every class before → after,
the places where it changed most (click: go there) — and, once accepted, the region's labels layer
showing the new model's labels (for a whole-slide result, written into a copy of its store), or
its classes once a class list is applied.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QTableWidget,
    QTableWidgetItem,
)

from ..corrections.workflow import write_back
from ..files.paths import accepted_labels_store_path
from ..labels import label_levels
from ._labels_layer import class_colormap, class_features, result_layer_name
from ._layers import writeback_spec

REVIEW_LAYER = "DFA changes (review)"
CHANGED_COLOR = (1.0, 0.0, 1.0, 1.0)  # magenta: no class colour uses it
LOOK_TIP = ("Where the new model changed most: click one to go there, then confirm it (Looks right) or paint what "
            "is wrong.")


def verdict_text(outcome) -> tuple[str, bool]:
    """What the status line says when fine-tuning is done, and whether it is a warning."""
    if outcome.promoted:
        return (f"Fine-tuned ({outcome.scores}). Look at the changes (magenta) and the areas under Review, then "
                "Accept or Reject."), False
    if outcome.needs_confirmation:
        return outcome.verdict.reason, False
    if not outcome.guard:
        return (f"The guard would keep the old model, but it is off: look at the changes, then Accept or Reject. "
                f"({outcome.verdict.reason})"), False
    return outcome.verdict.reason, True


def ask_text(outcome) -> str:
    """What Accept says before it uses a model the guard did not promote: what it does to each class."""
    changes = outcome.class_changes()
    return ("The guard did not promote this model. In the region under review "
            + ("it would change " + "; ".join(changes) if changes else "no class share changes by more than a "
               "quarter") + ". Click Accept again to use it anyway.")


class ReviewPanel:
    """``review_label`` (the guard's verdict), ``area_table`` (class, share before, after; pixels in
    the tooltips), ``look_label`` and ``look_list`` (where it changed most), in that order
    (:meth:`add_to`); empty until the first fine-tuning.

    Arguments:
      viewer: the napari viewer (the changed-pixels layer, the camera).

    Attributes:
      target: ``((level, region), pyramid)`` of the region under review (set when fine-tuning
        starts; ``(None, pyramid)`` when nothing is segmented again).
    """

    def __init__(self, viewer):
        self.viewer = viewer
        self.target = (None, None)
        self.review_label = QLabel("After fine-tuning, what changed shows here before you accept it.")
        self.review_label.setWordWrap(True)
        self.area_table = table = QTableWidget(0, 3)
        table.setHorizontalHeaderLabels(["Class", "Before", "After"])
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        # Shares in the cells (what changed), pixel counts in their tooltips: three columns fit a narrow dock.
        table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        for j in (1, 2):
            table.horizontalHeader().setSectionResizeMode(j, QHeaderView.ResizeMode.Stretch)
        table.verticalHeader().setDefaultSectionSize(table.fontMetrics().height() + 8)
        self.look_label = QLabel("Where it changed most (click to go there):")
        self.look_label.setWordWrap(True)
        self.look_list = QListWidget()
        self.look_list.setMaximumHeight(90)
        self.look_list.setToolTip(LOOK_TIP)
        self.look_list.itemClicked.connect(self._go_to)

    def add_to(self, layout) -> None:
        for w in (self.review_label, self.area_table, self.look_label, self.look_list):
            layout.addWidget(w)
        self.area_table.setVisible(False)
        self._show_look_list(False)

    def show(self, outcome) -> None:
        """The verdict, the per-class areas before → after, the changed-pixels layer, where to look."""
        self.review_label.setText(outcome.verdict.reason)
        self._show_areas(outcome.area_table())
        self._show_changed(outcome.changed())
        self._show_look_next(outcome.look_next())

    def clear(self) -> None:
        self.look_list.clear()
        self._show_look_list(False)
        if REVIEW_LAYER in self.viewer.layers:
            self.viewer.layers.remove(REVIEW_LAYER)

    def _show_areas(self, rows) -> None:
        table = self.area_table
        total_b = max(1, sum(b for _, b, _ in rows))
        total_a = max(1, sum(a for _, _, a in rows))
        table.setRowCount(len(rows))
        for i, (name, b, a) in enumerate(rows):
            table.setItem(i, 0, QTableWidgetItem(name))
            for j, (px, total) in ((1, (b, total_b)), (2, (a, total_a))):
                item = QTableWidgetItem(f"{100 * px / total:.1f} %")
                item.setToolTip(f"{px} px of {total}")
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                table.setItem(i, j, item)
        table.setVisible(True)
        # As tall as its rows (up to 10; more scroll): no scroll bar for a few classes.
        rows_height = sum(table.rowHeight(i) for i in range(min(table.rowCount(), 10)))
        table.setFixedHeight(rows_height + table.horizontalHeader().sizeHint().height() + 2 * table.frameWidth())

    def _show_changed(self, changed) -> None:
        target, pyramid = self.target
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

    def _show_look_next(self, places) -> None:
        """The few places where the new model changed most, largest first (click: go there)."""
        self.look_list.clear()
        target, pyramid = self.target
        if target is None:
            return
        level, (ry, rx, _, _) = target
        for y, x, h, w, px in places:
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
        _, pyramid = self.target
        if pyramid is None:
            return
        scale, translate = pyramid.placement(level, (y, x, h, w))
        self.viewer.camera.center = (translate[0] + h * scale[0] / 2, translate[1] + w * scale[1] / 2)
        ch, cw = self.viewer.canvas.size
        self.viewer.camera.zoom = 0.5 * min(ch / max(1.0, h * scale[0]), cw / max(1.0, w * scale[1]))

    def show_classes_applied(self, res, new, lut) -> str:
        """The result ``res``'s labels layer in the classes of ``new`` (the model given a class
        list without training; ``lut``: its old labels → new). Returns what else to say."""
        if res is None or res.labels_layer not in self.viewer.layers:
            return ""
        layer = self.viewer.layers[res.labels_layer]
        layer.colormap = class_colormap(new.class_colors)
        layer.features = class_features(new.class_names)
        if res.whole_slide:
            return " Segment again to see the whole slide in it."
        layer.data = lut[np.asarray(layer.data)]
        return " Pixels of removed classes are unlabelled until you segment again." if (lut[1:] == 0).any() else ""

    def show_accepted(self, session, labels, seg, old_seg) -> None:
        """Show ``labels`` (the region under review segmented by the accepted model ``seg``) in the
        session's labels layer, now named and coloured by ``seg``. For a whole-slide result they go
        into a copy of its store named by both models (``old_seg``'s store stays its own: a new
        session, or Roll back then Segment, shows exactly its labels), which the layer shows from
        now on. DataError when the store cannot be written."""
        res = session.result
        if res is None or res.labels_layer not in self.viewer.layers:
            return
        layer = self.viewer.layers[res.labels_layer]
        target, pyramid = self.target
        spec = writeback_spec(self.viewer, res, target)
        if spec is not None:
            spec.fork_to = accepted_labels_store_path(
                pyramid.path, res.level, seg.fingerprint() + ("-stain" if res.stain is not None else ""),
                old_seg.fingerprint() if old_seg is not None else "none")
            spec.info = dict(class_names=list(seg.class_names), class_colors=[list(c) for c in seg.class_colors],
                             accepted={"model": session.model_source, "over": str(res.store_path),
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
        source = session.model_source
        layer.name = result_layer_name(self.viewer, image_layer=res.image_layer, model=source,
                                       model_label=session.model_label(source),
                                       scope=md.get("scope", "whole" if res.whole_slide else "visible"))
        md["model"] = source
        res.labels_layer = layer.name  # napari may have added " [1]" to a name in use
