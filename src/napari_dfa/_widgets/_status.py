"""The status line's box: as tall as its text up to a few lines, then it scrolls.

A guard verdict or a domain warning can run to ten lines in a narrow dock. Laid out as a plain
label, a short dock squeezed it and cut its last lines; in this box the dock keeps room for the
first lines and the rest is a scroll away, while the buttons under it stay in view.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QSizePolicy

MAX_LINES = 6  # lines shown before the box scrolls


class StatusBox(QScrollArea):
    """Shows ``label`` (a word-wrapped QLabel) whole when it is short, its first lines otherwise.

    Arguments:
      label: the status QLabel (the widgets set its text).
      parent: optional Qt parent.
    """

    def __init__(self, label, parent=None):
        super().__init__(parent)
        self.setWidget(label)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        label.installEventFilter(self)

    def _height(self) -> int:
        """The text's height at the box's width, up to MAX_LINES; only a longer text gets the
        scroll bar (one shown for a short text took width, and the text then needed it)."""
        label = self.widget()
        width = max(1, (self.width() if self.isVisible() else label.width()) - 2 * self.frameWidth())
        need = label.heightForWidth(width) if label.text() else label.fontMetrics().lineSpacing()
        margins = label.contentsMargins().top() + label.contentsMargins().bottom()
        cap = MAX_LINES * label.fontMetrics().lineSpacing() + margins
        fits = need <= cap
        policy = Qt.ScrollBarPolicy.ScrollBarAlwaysOff if fits else Qt.ScrollBarPolicy.ScrollBarAsNeeded
        if self.verticalScrollBarPolicy() != policy:
            self.setVerticalScrollBarPolicy(policy)
        return (need if fits else cap) + 2 * self.frameWidth()

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        return QSize(self.minimumSizeHint().width(), self._height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        # As wide as the label's longest word (a file path in a message widens the dock, as before).
        return QSize(self.widget().minimumSizeHint().width() + 2 * self.frameWidth(), self._height())

    def eventFilter(self, obj, event) -> bool:  # noqa: N802
        # New text: ask the layout for the height it needs now.
        if obj is self.widget() and event.type() in (QEvent.Type.LayoutRequest, QEvent.Type.Show):
            self.updateGeometry()
        return super().eventFilter(obj, event)

    def viewportEvent(self, event) -> bool:  # noqa: N802
        if event.type() == QEvent.Type.LayoutRequest:  # the label's text changed
            self.updateGeometry()
        return super().viewportEvent(event)

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        if event.oldSize().width() != event.size().width():  # wrapped at another width: other height
            self.updateGeometry()

    def set_text_changed(self) -> None:
        """Called after the label's text changed."""
        self.updateGeometry()
        self.verticalScrollBar().setValue(0)  # a new message is read from its start
