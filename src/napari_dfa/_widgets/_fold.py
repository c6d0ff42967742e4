"""A section that folds away: a header button with an arrow, and controls shown only when open.

The widgets keep what is used at every step in view and fold what is used now and then (class
editing, QuPath files, training options), so that a laptop screen's dock shows the rest.
"""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QSizePolicy, QToolButton, QVBoxLayout, QWidget


class Fold(QWidget):
    """``title`` as a header button; ``layout`` holds the section's controls.

    Arguments:
      title: the section's name, shown with ▸ (folded) or ▾ (open).
      open: whether it starts open.
      tip: tooltip of the header (what the section holds).
      parent: optional Qt parent.
    """

    def __init__(self, title: str, *, open: bool = False, tip: str = "", parent=None):
        super().__init__(parent)
        self.header = QToolButton()
        self.header.setText(title)
        self.header.setCheckable(True)
        self.header.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.header.setAutoRaise(True)
        self.header.setStyleSheet("QToolButton { font-weight: bold; border: none; }")
        self.header.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        if tip:
            self.header.setToolTip(tip)
        self.content = QWidget()
        self.layout_ = QVBoxLayout(self.content)
        self.layout_.setContentsMargins(8, 0, 0, 0)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 4, 0, 0)
        outer.setSpacing(2)
        outer.addWidget(self.header)
        outer.addWidget(self.content)
        self.header.toggled.connect(self._show)
        self.header.setChecked(open)
        self._show(open)

    def addWidget(self, widget, stretch: int = 0) -> None:  # noqa: N802 (reads like a Qt layout)
        self.layout_.addWidget(widget, stretch)

    def addLayout(self, layout) -> None:  # noqa: N802
        self.layout_.addLayout(layout)

    def is_open(self) -> bool:
        return self.header.isChecked()

    def set_open(self, open: bool) -> None:
        self.header.setChecked(open)

    def _show(self, open: bool) -> None:
        self.header.setArrowType(Qt.ArrowType.DownArrow if open else Qt.ArrowType.RightArrow)
        self.content.setVisible(open)
