"""The Fine-tune widget's saved corrections (Qt): every correction patch saved for the slide in
view, with its classes and where it came from; untick one to hide it (it then does not train), pick
some to show or delete them, or export those in use as QuPath GeoJSON. The line above the list
says how many corrected pixels are in use, per class (the store's own count), and how many patches
are hidden.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
)

from ..errors import DataError
from ._base import error_text
from ._fold import Fold

EMPTY = "No corrections saved for this slide yet."
LIST_TIP = ("Every correction saved for this slide. Untick to hide one (a hidden correction does not train); select "
            "and Delete to drop it for good.")


def _source_word(source: str) -> str:
    """Where a saved correction came from, in a word (the saved list's first column)."""
    if source.startswith("geojson:"):
        return "QuPath"
    return {"paint": "painted"}.get(source, source)


def patch_layers(viewer, key: str) -> list:
    """The layers that show saved correction patch ``key``."""
    return [layer for layer in viewer.layers if ((layer.metadata or {}).get("napari_dfa") or {}).get("patch") == key]


class SavedPanel:
    """The ``fold`` "Saved corrections": ``saved_label`` (totals), ``saved_list`` (a row a patch:
    Use box, classes; when and the full source in its tooltip), ``load_button``, ``delete_button``
    (the widget connects them).

    Arguments:
      viewer: the napari viewer (layers of a hidden patch are hidden too).
      current_store: returns the current slide's correction store, or None.
      say: the widget's status line.
    """

    def __init__(self, viewer, *, current_store, say):
        self.viewer, self.current_store, self.say = viewer, current_store, say
        self._announced: set[str] = set()  # stores whose saved corrections were announced
        self.saved_label = QLabel()
        self.saved_label.setWordWrap(True)
        self.saved_list = tree = QTreeWidget()
        tree.setHeaderLabels(["Use", "Classes (px)", "When", "From"])
        tree.setRootIsDecorated(False)
        # Narrow dock: the tick and where a patch came from, then its classes (wrapped); when it
        # was saved and its full source are in the row's tooltip (columns 2-3 keep them as data).
        tree.setWordWrap(True)
        tree.setColumnHidden(2, True)
        tree.setColumnHidden(3, True)
        tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        tree.setMaximumHeight(110)
        tree.setToolTip(LIST_TIP)
        tree.header().setStretchLastSection(False)
        tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        tree.header().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.load_button = QPushButton("Show")
        self.delete_button = QPushButton("Delete")
        self.fold = Fold("Saved corrections", open=True, tip="Every correction saved for this slide")
        self.fold.addWidget(self.saved_label)
        self.fold.addWidget(tree)
        buttons = QHBoxLayout()
        for b in (self.load_button, self.delete_button):
            buttons.addWidget(b)
        self.fold.addLayout(buttons)
        tree.itemChanged.connect(self._on_item)

    def show(self, store, *, announce: bool = False) -> None:
        """List ``store``'s patches (None: nothing saved). ``announce``: say once per store that it
        has saved corrections (they train the next fine-tuning unless unticked or deleted)."""
        tree = self.saved_list
        if store is None:
            tree.clear()
            self.saved_label.setText(EMPTY)
            return
        infos = [store.info(p.key) for p in store.patches()]
        tree.blockSignals(True)
        tree.clear()
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
            tree.addTopLevelItem(item)
        tree.blockSignals(False)
        total = self.show_total(store)
        if infos and str(store.path) not in self._announced:
            self._announced.add(str(store.path))
            if announce:
                self.say(f"This slide has {len(infos)} saved correction patch(es) from before ({total} px in use, "
                         "listed under Saved corrections). They train the next fine-tuning unless you untick or "
                         "delete them.")

    def show_total(self, store) -> int:
        """The line above the list: corrected pixels in use per class, and how many are hidden."""
        used = store.counts_by_name()
        total = sum(used.values())
        hidden = sum(store.hidden(p.key) for p in store.patches())
        self.saved_label.setToolTip(str(store.path))  # the label itself stays short: a narrow dock
        self.saved_label.setText(f"Saved on disk: {total} px in use"
                                 + (f" — {', '.join(f'{n}: {px}' for n, px in used.items())}" if used else "")
                                 + (f"; {hidden} hidden" if hidden else ""))
        return total

    def _on_item(self, item, column=0) -> None:
        key = item.data(0, Qt.ItemDataRole.UserRole)
        store = self.current_store()
        if store is None or key is None:
            return
        hidden = item.checkState(0) != Qt.CheckState.Checked
        store.set_hidden(key, hidden)
        for layer in patch_layers(self.viewer, key):
            layer.visible = not hidden
        # (not show(): rebuilding the list would delete the item whose signal this is)
        self.show_total(store)
        self.say("Hidden: that correction is kept on disk but does not train." if hidden
                 else "That correction is in use again.")

    def set_used(self, key: str, used: bool) -> None:
        """Tick or untick a saved correction in the list (as a click on its box does)."""
        for i in range(self.saved_list.topLevelItemCount()):
            item = self.saved_list.topLevelItem(i)
            if item.data(0, Qt.ItemDataRole.UserRole) == key:
                item.setCheckState(0, Qt.CheckState.Checked if used else Qt.CheckState.Unchecked)
                return

    def selected_keys(self) -> list[str]:
        return [it.data(0, Qt.ItemDataRole.UserRole) for it in self.saved_list.selectedItems()]

    def export(self, path, class_colors) -> Path | None:
        """Write the corrections in use as QuPath GeoJSON annotations (level-0 pixels)."""
        store = self.current_store()
        if store is None or not store.corrected_pixels():
            self.say("No corrections in use to export.", error=True)
            return None
        try:
            out = store.export_geojson(path, class_colors=class_colors)
        except (OSError, DataError) as exc:
            self.say(f"Could not export to {path}: {error_text(exc)}", error=True)
            return None
        self.say(f"Exported the corrections to {out} (QuPath: File > Import objects).")
        return out
