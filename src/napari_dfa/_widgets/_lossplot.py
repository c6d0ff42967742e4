"""A live loss curve painted with QPainter.

A matplotlib redraw of even a small figure costs ~100 ms of UI-thread time on a 2-core machine
(text rendering), once per update; painting two polylines costs about a millisecond, so the curve
can follow every fine-tuning step without the viewer stuttering.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

TRAIN = QColor(31, 119, 180)
HELD_OUT = QColor(255, 127, 14)


class LossPlot(QWidget):
    """Train loss (line) and held-out loss (dots) against the step.

    Arguments:
      parent: optional Qt parent.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.train: list[tuple[float, float]] = []
        self.val: list[tuple[float, float]] = []
        self.total = 1
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def set_data(self, train, val, total: int) -> None:
        """Replace the points (finite values only) and repaint."""
        self.train = [(float(s), float(v)) for s, v in train if v is not None and math.isfinite(v)]
        self.val = [(float(s), float(v)) for s, v in val if v is not None and math.isfinite(v)]
        self.total = max(1, int(total))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), self.palette().base())
        fm = p.fontMetrics()
        left, bottom, top, right = fm.horizontalAdvance("0.000") + 8, fm.height() + 6, 6, 8
        box = QRectF(left, top, max(10, self.width() - left - right), max(10, self.height() - top - bottom))
        text = self.palette().text().color()
        p.setPen(QPen(text, 1))
        p.drawRect(box)
        points = self.train + self.val
        if not points:
            p.drawText(box, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, "loss per step appears here")
            p.end()
            return
        lo = min(v for _, v in points)
        hi = max(v for _, v in points)
        if hi - lo < 1e-9:
            lo, hi = lo - 0.5, hi + 0.5

        def at(s, v):
            return QPointF(box.left() + box.width() * s / self.total,
                           box.bottom() - box.height() * (v - lo) / (hi - lo))

        p.drawText(QRectF(0, box.top() - 2, left - 4, fm.height()), Qt.AlignmentFlag.AlignRight, f"{hi:.3f}")
        p.drawText(QRectF(0, box.bottom() - fm.height() + 2, left - 4, fm.height()),
                   Qt.AlignmentFlag.AlignRight, f"{lo:.3f}")
        p.drawText(QRectF(box.left(), box.bottom() + 2, box.width(), fm.height()),
                   Qt.AlignmentFlag.AlignCenter, f"step (of {self.total})")
        # The legend in the curves' own colours, top right inside the box (a narrow dock has no
        # room for a sentence under it).
        x = box.right() - 4
        for word, color in (("held-out", HELD_OUT), ("train", TRAIN)):
            x -= fm.horizontalAdvance(word)
            p.setPen(QPen(color, 1))
            p.drawText(QPointF(x, box.top() + fm.ascent() + 2), word)
            x -= fm.horizontalAdvance("  ")
        if len(self.train) > 1:
            p.setPen(QPen(TRAIN, 1.5))
            p.drawPolyline(QPolygonF([at(s, v) for s, v in self.train]))
        p.setPen(QPen(HELD_OUT, 1))
        p.setBrush(HELD_OUT)
        for s, v in self.val:
            p.drawEllipse(at(s, v), 3, 3)
        p.end()
