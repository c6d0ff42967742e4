"""The Fine-tune widget's model versions (Qt): every model this session used, to roll back to (in
every widget), and Save model… (the current model with its provenance)."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QComboBox, QFileDialog, QPushButton

from ._base import eliding_combo, error_text, narrow_combo
from ._session import add_recent_model


class VersionsPanel:
    """``version_combo`` and ``rollback_button`` (pinned by the widget), ``save_button``.

    Arguments:
      parent: the widget (parent of the file dialog).
      session: the viewer's session (its model and versions).
      say: the widget's status line.
      need_model: returns the model in use (DataError when there is none).
      before_rollback: called before another version is used (the review goes with the model).
    """

    def __init__(self, parent, session, *, say, need_model, before_rollback):
        self.parent, self.session, self.say = parent, session, say
        self.need_model, self.before_rollback = need_model, before_rollback
        self.save_button = QPushButton("Save model…")
        self.version_combo = narrow_combo(eliding_combo(QComboBox()), chars=4,
                                          tip="Model versions of this session: pick one, then Roll back")
        self.rollback_button = QPushButton("Roll back")
        self.rollback_button.setToolTip("Use the version picked in the list again, in every widget")
        self.save_button.clicked.connect(self._ask_save)
        # (a lambda: `clicked` would pass its `checked` flag as the version index)
        self.rollback_button.clicked.connect(lambda: self.rollback())

    def show(self) -> None:
        """List the session's versions, the one in use picked."""
        self.version_combo.clear()
        for v in self.session.versions:
            self.version_combo.addItem(v["label"])
        current = [i for i, v in enumerate(self.session.versions) if v["segmenter"] is self.session.segmenter]
        if current:
            self.version_combo.setCurrentIndex(current[0])

    def save(self, path) -> Path | None:
        """Write the current model with its provenance (parent, corrections, scores)."""
        try:
            seg = self.need_model()
            out = seg.save(path, provenance=dict(seg.metadata.get("provenance") or {}))
        except Exception as exc:  # a full disk or a bad path must not crash napari
            self.say(f"Could not save {path}: {error_text(exc)}", error=True)
            return None
        add_recent_model(str(out))
        self.say(f"Saved {out}.")
        return Path(out)

    def _ask_save(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self.parent, "Save the fine-tuned model",
                                              str(Path.home() / "dfa-finetuned.safetensors"),
                                              "napari-dfa models (*.safetensors)")
        if path:
            self.save(path if path.endswith(".safetensors") else path + ".safetensors")

    def rollback(self, index: int | None = None) -> None:
        """Go back to a previous model version (default: the one picked in the list), in every widget."""
        index = self.version_combo.currentIndex() if index is None else index
        if not 0 <= index < len(self.session.versions):
            self.say("No previous model version to roll back to.", error=True)
            return
        v = self.session.versions[index]
        self.before_rollback()
        self.session.set_model(v["segmenter"], v["source"])
        self.session.bias_changed.emit()
        self.say(f"Rolled back to {v['label']}; segment again to see its labels.")
