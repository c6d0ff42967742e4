"""The Fine-tune widget's classes (Qt): the paint class picker, and the folded list to add, rename,
recolour and remove classes and apply the list to the model.

It shows a :class:`~napari_dfa.corrections.classdraft.ClassDraft` and asks the user for names and
colours; the widget's ``add_class`` … ``apply_classes`` (handed in as callbacks) edit the draft and
make the store and the layers follow it.
"""

from __future__ import annotations

from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QColorDialog,
    QComboBox,
    QGridLayout,
    QInputDialog,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
)

from ._base import narrow_combo
from ._fold import Fold

CHANGED_NOTE = ("The class list differs from the model's: the next fine-tuning teaches it (new classes get a new "
                "token; renamed ones keep theirs).")
APPLY_TIP = ("Give the model this class list now, without training: renamed and recoloured classes keep what they "
             "learned, removed ones are dropped, a new class gets a token of its own (learnt at the next "
             "fine-tuning). Fine-tuning applies the list too.")


def swatch(color) -> QIcon:
    pix = QPixmap(12, 12)
    pix.fill(QColor(*[int(v) for v in color[:3]]))
    return QIcon(pix)


class ClassPanel:
    """The paint class picker (``class_combo``: label ``index + 1``) and the ``fold`` of the class
    list with its buttons.

    Arguments:
      parent: the widget (parent of the dialogs).
      say: the widget's status line (``say(text, error=...)``).
      add / rename / recolor / remove / apply: the widget's class edits, called with what the user
        picked (``add(name, color or None)``, ``rename(old, new)``, ``recolor(name, rgb)``,
        ``remove(name)``, ``apply()``).
    """

    def __init__(self, parent, *, say, add, rename, recolor, remove, apply):
        self.parent, self.say = parent, say
        self._add, self._rename, self._recolor, self._remove = add, rename, recolor, remove
        self._draft = None
        self.class_combo = narrow_combo(QComboBox(), chars=4)
        self.class_list = QListWidget()
        self.class_list.setMaximumHeight(110)
        self.add_class_button = QPushButton("Add…")
        self.rename_class_button = QPushButton("Rename…")
        self.color_class_button = QPushButton("Colour…")
        self.remove_class_button = QPushButton("Remove")
        self.apply_classes_button = QPushButton("Apply to the model")
        self.apply_classes_button.setToolTip(APPLY_TIP)
        self.classes_note = QLabel()
        self.classes_note.setWordWrap(True)
        self.fold = Fold("Classes", tip="Add, rename, recolour or remove classes")
        self.fold.addWidget(self.class_list)
        edits = QGridLayout()
        for i, b in enumerate((self.add_class_button, self.rename_class_button, self.color_class_button,
                               self.remove_class_button)):
            edits.addWidget(b, i // 2, i % 2)
        self.fold.addLayout(edits)
        self.fold.addWidget(self.classes_note)
        self.fold.addWidget(self.apply_classes_button)
        self.add_class_button.clicked.connect(self._ask_add)
        self.rename_class_button.clicked.connect(self._ask_rename)
        self.color_class_button.clicked.connect(self._ask_color)
        self.remove_class_button.clicked.connect(lambda: self.selected() and self._remove(self.selected()))
        self.apply_classes_button.clicked.connect(lambda: apply())

    def show(self, draft, *, has_model: bool) -> None:
        """Show ``draft`` in the picker (keeping the class picked, by name) and the list; the note and
        Apply when it differs from the model's list."""
        self._draft = draft
        current = self.class_combo.currentText()
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        self.class_list.clear()
        for name, color in zip(draft.names(), draft.colors()):
            self.class_combo.addItem(swatch(color), name)
            self.class_list.addItem(QListWidgetItem(swatch(color), name))
        if current in draft.names():
            self.class_combo.setCurrentText(current)
        self.class_combo.blockSignals(False)
        changed = draft.changed and has_model
        self.classes_note.setText(CHANGED_NOTE if changed else "")
        self.apply_classes_button.setEnabled(changed)

    def pick(self, name: str) -> None:
        """Pick the paint class by name (case-insensitive)."""
        names = [self.class_combo.itemText(i).lower() for i in range(self.class_combo.count())]
        self.class_combo.setCurrentIndex(names.index(name.lower()))

    def selected(self) -> str | None:
        item = self.class_list.currentItem()
        if item is None:
            self.say("Pick a class in the list first.", error=True)
            return None
        return item.text()

    def _ask_add(self) -> None:
        name, ok = QInputDialog.getText(self.parent, "Add a class", "Name of the new class:")
        if ok and name:
            color = QColorDialog.getColor(parent=self.parent, title=f"Colour of {name}")
            self._add(name, color.getRgb()[:3] if color.isValid() else None)

    def _ask_rename(self) -> None:
        old = self.selected()
        if old:
            new, ok = QInputDialog.getText(self.parent, "Rename a class", f"New name of {old!r}:", text=old)
            if ok and new:
                self._rename(old, new)

    def _ask_color(self) -> None:
        name = self.selected()
        if name:
            color = QColorDialog.getColor(QColor(*self._draft.color_of(name)), self.parent, f"Colour of {name}")
            if color.isValid():
                self._recolor(name, color.getRgb()[:3])
