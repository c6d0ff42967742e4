"""What a user sees of a docked widget, as lists of problems (empty: all is well).

Each function walks the widgets a user can see and returns one line per problem, with the numbers
(px) that show it, so that a failing assertion says what is cut and by how much:

- :func:`too_wide`: a widget wider than the area that shows it (its dock, or the scroll area's
  viewport: nothing scrolls sideways), or a body that would need a horizontal scroll bar;
- :func:`cut_texts`: a button, label, combo box, tab, table/tree/list cell or header whose text
  needs more width than it has (the text would be cut or elided);
- :func:`out_of_view`: a widget that is not wholly on screen without scrolling.
"""

from __future__ import annotations

from qtpy.QtCore import QPoint, QRect, QSize, Qt
from qtpy.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QAbstractScrollArea,
    QCheckBox,
    QComboBox,
    QHeaderView,
    QLabel,
    QListWidget,
    QPushButton,
    QRadioButton,
    QStyle,
    QStyleOptionButton,
    QStyleOptionComboBox,
    QStyleOptionViewItem,
    QTableWidget,
    QTabBar,
    QTreeWidget,
    QWidget,
)

CELL_PADDING = 8  # px a tab or a header keeps around its text (style margins on both sides)


def shown(root: QWidget) -> list[QWidget]:
    """``root``'s descendants a user can see (visible, not inside a closed or scrolled-away
    parent's hidden part is not decided here: see :func:`out_of_view`), item views' own parts
    (headers, viewports, scroll bars) left out: their cells are checked by :func:`cut_texts`."""
    out = []
    for w in root.findChildren(QWidget):
        if not w.isVisible() or w.width() <= 0:
            continue
        if any(isinstance(a, QAbstractItemView) for a in _ancestors(w, root)):
            continue
        out.append(w)
    return out


def _ancestors(w: QWidget, root: QWidget):
    p = w.parentWidget()
    while p is not None and p is not root:
        yield p
        p = p.parentWidget()


def _clip(w: QWidget, root: QWidget) -> QWidget:
    """The area that shows ``w``: the viewport of the innermost scroll area around it, else ``root``."""
    for a in _ancestors(w, root):
        parent = a.parentWidget()
        if isinstance(parent, QAbstractScrollArea) and a is parent.viewport():
            return a
    return root


def _name(w: QWidget) -> str:
    text = w.text() if hasattr(w, "text") and callable(w.text) else ""
    text = text if isinstance(text, str) else ""
    return f"{type(w).__name__} {text[:40]!r}" if text else f"{type(w).__name__} {w.objectName()!r}"


# --- widths -------------------------------------------------------------------------------------
def too_wide(dock: QWidget, widget) -> list[str]:
    """Widgets of ``widget`` (a DFAWidget docked in ``dock``) wider than what shows them."""
    problems = []
    if widget.minimumSizeHint().width() > dock.width():
        problems.append(f"{type(widget).__name__} needs {widget.minimumSizeHint().width()} px, dock is {dock.width()}")
    viewport = widget.scroll.viewport()
    need = widget.body.minimumSizeHint().width()
    if need > viewport.width():
        problems.append(f"{type(widget).__name__} body needs {need} px, its scroll area shows {viewport.width()}")
    for w in shown(widget):
        clip = _clip(w, widget)
        left = w.mapTo(clip, QPoint(0, 0)).x()
        if left < 0 or left + w.width() > clip.width():
            problems.append(f"{_name(w)} spans x {left}..{left + w.width()}, visible 0..{clip.width()}")
    return problems


# --- texts --------------------------------------------------------------------------------------
def cut_texts(root: QWidget) -> list[str]:
    """Texts under ``root`` (shown widgets, and ``root`` if it is a tab bar) that do not fit."""
    problems = []
    widgets = shown(root) + ([root] if isinstance(root, QTabBar) else [])
    for w in widgets:
        if isinstance(w, QAbstractButton):
            problems += _button(w)
        elif isinstance(w, QLabel):
            problems += _label(w)
        elif isinstance(w, QComboBox):
            problems += _combo(w)
        elif isinstance(w, QTabBar):
            problems += _tabs(w)
        elif isinstance(w, (QTableWidget, QTreeWidget, QListWidget)):
            problems += _cells(w)
    return problems


def _button(b: QAbstractButton) -> list[str]:
    if not b.text():
        return []
    opt = QStyleOptionButton()
    opt.initFrom(b)
    opt.text = b.text()
    if isinstance(b, QCheckBox):
        element = QStyle.SubElement.SE_CheckBoxContents
    elif isinstance(b, QRadioButton):
        element = QStyle.SubElement.SE_RadioButtonContents
    elif isinstance(b, QPushButton):
        element = QStyle.SubElement.SE_PushButtonContents
    else:  # a tool button: its whole rect less the arrow/icon beside the text
        room = b.contentsRect().width() - (b.iconSize().width() + 4 if not b.icon().isNull() or
                                          getattr(b, "arrowType", lambda: 0)() else 0)
        need = b.fontMetrics().horizontalAdvance(b.text())
        return [f"{_name(b)}: text {need} px, room {room}"] if need > room else []
    room = b.style().subElementRect(element, opt, b).width()
    if isinstance(b, QPushButton) and not b.icon().isNull():
        room -= b.iconSize().width() + 4
    need = b.fontMetrics().horizontalAdvance(b.text())
    problems = [f"{_name(b)}: text {need} px, room {room}"] if need > room else []
    if b.width() < b.sizeHint().width():
        problems.append(f"{_name(b)}: {b.width()} px wide, needs {b.sizeHint().width()}")
    return problems


def _label(label: QLabel) -> list[str]:
    if not label.text() or label.pixmap() is not None and not label.pixmap().isNull():
        return []
    room = label.contentsRect().width()
    if label.wordWrap():
        # wrapped: the longest word fits the width, and every line fits the height
        need_w = label.minimumSizeHint().width() - (label.width() - room)
        need_h = label.heightForWidth(label.width())
        problems = []
        if need_w > room:
            problems.append(f"{_name(label)}: a word needs {need_w} px, room {room}")
        if need_h > label.height():
            problems.append(f"{_name(label)}: wrapped text needs {need_h} px high, has {label.height()}")
        return problems
    need = label.sizeHint().width()
    return [f"{_name(label)}: text needs {need} px, has {label.width()}"] if need > label.width() else []


def _combo(c: QComboBox) -> list[str]:
    """Every item fits the box's text field (any of them can be the one shown)."""
    opt = QStyleOptionComboBox()
    c.initStyleOption(opt)
    field = c.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, opt,
                                     QStyle.SubControl.SC_ComboBoxEditField, c)
    problems = []
    for i in range(c.count()):
        text = c.itemText(i)
        need = c.fontMetrics().horizontalAdvance(text)
        if not c.itemIcon(i).isNull():
            need += c.iconSize().width() + 4
        if need > field.width():
            problems.append(f"{_name(c)} item {text!r}: text {need} px, field {field.width()}")
    return problems


def _tabs(bar: QTabBar) -> list[str]:
    problems = []
    for i in range(bar.count()):
        rect = bar.tabRect(i)
        need = bar.fontMetrics().horizontalAdvance(bar.tabText(i))
        if need + CELL_PADDING > rect.width() or rect.right() > bar.width():
            problems.append(f"tab {bar.tabText(i)!r}: text {need} px, tab x {rect.left()}..{rect.right()} "
                            f"in a bar {bar.width()} wide")
    return problems


def _cells(view) -> list[str]:
    """Every cell's text fits the room its style gives it (wrapped cells: each word across, every
    line down), and the view does not scroll sideways."""
    problems = []
    fm = view.fontMetrics()
    if view.horizontalScrollBar().isVisible():
        problems.append(f"{_name(view)} scrolls sideways")
    width = view.viewport().width()
    model = view.model()
    if isinstance(view, QListWidget):
        indexes = [model.index(i, 0) for i in range(model.rowCount())]
    else:
        header = view.horizontalHeader() if isinstance(view, QTableWidget) else view.header()
        columns = [j for j in range(header.count()) if not header.isSectionHidden(j)]
        for j in columns:
            right = header.sectionViewportPosition(j) + header.sectionSize(j)
            if right > width:
                problems.append(f"{_name(view)} column {j} ends at {right} px, view is {width}")
            problems += _header_text(view, header, j)
        indexes = [model.index(i, j) for i in range(model.rowCount()) for j in columns]
    margin = view.style().pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, None, view) + 1
    for index in indexes:
        text = str(index.data() or "")
        if not text:
            continue
        rect = _text_rect(view, index)
        room = rect.width() - 2 * margin
        if view.wordWrap():
            need_w = max(fm.horizontalAdvance(w) for w in text.split())
            need_h = fm.boundingRect(QRect(0, 0, max(1, room), 10_000), Qt.TextFlag.TextWordWrap, text).height()
        else:
            need_w, need_h = fm.horizontalAdvance(text), fm.height()
        if need_w > room or need_h > rect.height():
            problems.append(f"{_name(view)} cell ({index.row()}, {index.column()}) {text!r}: needs {need_w} × "
                            f"{need_h} px, has {room} × {rect.height()}")
    return problems


def _text_rect(view, index) -> QRect:
    """Where the view's style draws the text of the cell at ``index``: its rect less the check box
    and the icon (the options a styled delegate gives the style for that cell)."""
    opt = QStyleOptionViewItem()
    opt.initFrom(view)
    opt.rect = view.visualRect(index)
    opt.text = str(index.data() or "")
    opt.font = view.font()
    opt.features = QStyleOptionViewItem.ViewItemFeature.HasDisplay
    if view.wordWrap():
        opt.features |= QStyleOptionViewItem.ViewItemFeature.WrapText
    if index.data(Qt.ItemDataRole.CheckStateRole) is not None:
        opt.features |= QStyleOptionViewItem.ViewItemFeature.HasCheckIndicator
    if index.data(Qt.ItemDataRole.DecorationRole) is not None:
        opt.features |= QStyleOptionViewItem.ViewItemFeature.HasDecoration
        size = view.iconSize()
        opt.decorationSize = size if size.isValid() else QSize(16, 16)
    return view.style().subElementRect(QStyle.SubElement.SE_ItemViewItemText, opt, view)


def _header_text(view, header: QHeaderView, j: int) -> list[str]:
    if not header.isVisible():
        return []
    text = str(view.model().headerData(j, header.orientation()) or "")
    need = header.fontMetrics().horizontalAdvance(text) + CELL_PADDING
    size = header.sectionSize(j)
    return [f"{_name(view)} header {text!r}: needs {need} px, has {size}"] if need > size else []


# --- in view ------------------------------------------------------------------------------------
def out_of_view(window: QWidget, widget, controls) -> list[str]:
    """Which of ``controls`` (widgets of ``widget``, its scroll area at the top) a user cannot
    see whole without scrolling: hidden, outside the window, or clipped by a scroll area."""
    problems = []
    for c in controls:
        if not c.isVisible():
            problems.append(f"{_name(c)} is hidden")
            continue
        rect = QRect(c.mapTo(window, QPoint(0, 0)), c.size())
        if not window.rect().contains(rect):
            problems.append(f"{_name(c)} at {rect.getRect()} is outside the window {window.rect().getRect()}")
        clip = _clip(c, widget)
        inner = QRect(c.mapTo(clip, QPoint(0, 0)), c.size())
        if not clip.rect().contains(inner):
            problems.append(f"{_name(c)} at y {inner.top()}..{inner.bottom()} of a view 0..{clip.height()} "
                            "(needs scrolling)")
        if c.visibleRegion().boundingRect() != c.rect():
            problems.append(f"{_name(c)}: only {c.visibleRegion().boundingRect().getRect()} of {c.rect().getRect()} "
                            "is visible")
    return problems
