"""The Fine-tune widget's QuPath section (Qt): import class-annotated polygons from a QuPath GeoJSON
file as corrections (adding the classes the list lacks, if asked), export the corrections to one,
and what an import did in plain words."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QCheckBox, QFileDialog, QPushButton

from ._fold import Fold

ADD_MISSING_TIP = ("On import, add the QuPath classes the model does not have to the class list (QuPath's Ignore* "
                   "class always means 'not corrected')")


class QuPathPanel:
    """The ``fold`` "QuPath GeoJSON": ``import_button``, ``add_missing``, ``export_button``.

    Arguments:
      parent: the widget (parent of the file dialogs).
      import_file / export_file: the widget's import and export, called with the path picked.
    """

    def __init__(self, parent, *, import_file, export_file):
        self.parent, self._import, self._export = parent, import_file, export_file
        self.import_button = QPushButton("Import QuPath GeoJSON…")
        self.add_missing = QCheckBox("Add missing classes")
        self.add_missing.setToolTip(ADD_MISSING_TIP)
        self.export_button = QPushButton("Export GeoJSON…")
        self.fold = Fold("QuPath GeoJSON", tip="Import annotations from QuPath, export corrections to it")
        for w in (self.import_button, self.add_missing, self.export_button):
            self.fold.addWidget(w)
        self.import_button.clicked.connect(self._ask_import)
        self.export_button.clicked.connect(self._ask_export)

    def _ask_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.parent, "Import QuPath annotations", str(Path.home()),
                                              "GeoJSON (*.geojson *.json *.gz *.zip);;All files (*)")
        if path:
            self._import(path)

    def _ask_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self.parent, "Export corrections as QuPath GeoJSON",
                                              str(Path.home() / "corrections.geojson"), "GeoJSON (*.geojson)")
        if path:
            self._export(path)


def import_text(path, done) -> str:
    """What an import did (``done``: :class:`~._finetune_corrections.Imported`), in plain words."""
    text = f"Imported {Path(path).name}: {int((done.layer.data > 0).sum())} corrected pixels."
    if done.matched:
        text += " Read " + ", ".join(f"QuPath's {k} as {v}" for k, v in done.matched.items()) + "."
    if done.report.replaced:
        text += (" It replaced the earlier import of the same annotations (same file or QuPath ids), "
                 "so nothing is counted twice.")
    if done.added:
        text += f" Added the classes {', '.join(done.missing)}."
    elif done.missing:
        text += (f" Skipped the classes the model lacks: {', '.join(done.missing)} (tick 'Add missing classes' to "
                 "add them).")
    others = [why for _, why in done.report.skipped if "does not know" not in why]
    if others:
        text += f" Skipped {len(others)} other features (e.g. {others[0]})."
    return text
