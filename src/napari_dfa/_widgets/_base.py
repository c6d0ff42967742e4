"""What every napari-dfa dock widget does the same way: find the viewer's session, run one job at a
time in a thread worker, carry its progress to the UI thread, cancel it, and say what happened in a
status line (errors in red, and as a notification) that clears itself once the problem is gone.

Layout: the status line sits at the top, always in view (a long message scrolls in its box of a
few lines: see :mod:`._status`); under it ``self.pinned`` holds the main
buttons (never scrolled away); everything else goes into ``self.body`` inside a scroll area that
scrolls up and down, never sideways. The scroll area is as wide as the body's narrowest layout, so a
dock can never be dragged narrower than its controls, and the widgets are laid out to fit napari's
default dock (about 234 px in a 1280 × 800 window): the three docked together fit a laptop screen
and no message is pushed below a plot.

Nothing here computes anything about tissue: that is :mod:`napari_dfa.inference` and
:mod:`napari_dfa.corrections.workflow`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from qtpy.QtCore import QEvent, QObject, QSize, Qt
from qtpy.QtCore import Signal as QtSignal
from qtpy.QtWidgets import QApplication, QFrame, QLabel, QScrollArea, QVBoxLayout, QWidget

from ..errors import Cancelled, DFAError
from ._session import session_for
from ._status import StatusBox

logger = logging.getLogger(__name__)

ERROR_STYLE = "color: #e05050;"
MARGIN = 4  # px left and right of the controls: a narrow dock keeps its width for them


# --- messages ---------------------------------------------------------------------------------
def notify(message: str, *, severity: str = "info") -> None:
    from napari.utils import notifications

    logger.info(message)
    {"info": notifications.show_info, "warning": notifications.show_warning,
     "error": notifications.show_error}[severity](message)


def error_text(exc: BaseException) -> str:
    """One line for the user: our errors say what to do; anything else gets its type named."""
    if isinstance(exc, DFAError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# --- background work ------------------------------------------------------------------------------
class Bridge(QObject):
    """Carries progress from a worker thread to the UI thread (Qt queues cross-thread signals)."""

    progress = QtSignal(object)


@dataclass
class Eta:
    """Remaining time from done/total, for progress labels; ``due()`` throttles UI updates."""

    start: float = field(default_factory=time.monotonic)
    last: float = 0.0
    every: float = 0.25  # s between progress repaints: each repaint composes napari's GL canvas

    def due(self, done: int, total: int) -> bool:
        now = time.monotonic()
        if done >= total or now - self.last >= self.every:
            self.last = now
            return True
        return False

    def text(self, done: int, total: int) -> str:
        if not total or not done:
            return ""
        elapsed = time.monotonic() - self.start
        left = elapsed * (total - done) / done
        return f"{done}/{total}, about {left:.0f} s left" if left >= 1 else f"{done}/{total}"


def start_worker(fn, *, on_done, on_error, on_finished=None):
    """Run ``fn()`` in a napari thread worker; results and errors come back on the UI thread."""
    from napari.qt.threading import create_worker

    # torch comes with this: imported at the first job, not when the widget is docked
    from ..inference import background

    background.leave_a_core_for_the_ui()

    connect = {"returned": on_done, "errored": on_error}
    if on_finished is not None:
        connect["finished"] = on_finished
    worker = create_worker(fn, _connect=connect)
    _running.add(worker)
    worker.finished.connect(lambda: _running.discard(worker))
    _await_at_quit()
    return worker


_running: set = set()  # workers started here and not finished yet
_hooked = False


def _await_at_quit() -> None:
    """Once per process: when the application quits (napari closed) or Python exits, ask our
    workers to stop and wait for them. A worker that finished after Qt had deleted its signals object aborted the whole
    process (SIGABRT: "wrapped C/C++ object of type WorkerBaseSignals has been deleted")."""
    global _hooked
    app = QApplication.instance()
    if _hooked or app is None:
        return
    _hooked = True
    app.aboutToQuit.connect(await_workers)
    # A script that closes the viewer and ends never quits the application: wait at exit too
    # (registered after Qt's own exit handler, so it runs before Qt tears its objects down).
    import atexit

    atexit.register(await_workers)


def await_workers(timeout_ms: int = 120_000) -> bool:
    """Ask every running worker to stop, then wait for them; False if one still runs after
    ``timeout_ms`` (a model pass in progress finishes its tile first)."""
    from qtpy.QtCore import QThreadPool

    for worker in list(_running):
        try:
            worker.quit()
        except RuntimeError:  # its Qt side is gone already
            _running.discard(worker)
    done = QThreadPool.globalInstance().waitForDone(timeout_ms)
    _running.clear()
    return bool(done)


_warm = None


def warm_up_in_background() -> None:
    """Import and initialise, in a background thread while the user opens a slide, what the first
    Segment / Fine-tune click would otherwise load in its worker (once per process)."""
    global _warm
    if _warm is not None:
        return

    def run():
        try:
            from ..corrections import workflow
            from ..inference import background

            background.warm_up_inference()
            workflow.warm_up_training()
        except Exception:  # a warm-up must never break the widget
            logger.debug("warm-up failed", exc_info=True)

    _warm = threading.Thread(target=run, name="napari-dfa-warm-up", daemon=True)
    _warm.start()


# --- layout ---------------------------------------------------------------------------------------
class BodyScroll(QScrollArea):
    """Scrolls a widget's body up and down, never sideways: its width hints are the body's minimum
    width plus the scroll bar's, so the dock is as wide as the controls need and no wider."""

    MIN_HEIGHT = 60  # a dock squeezed by others still shows a few rows and the scroll bar

    def __init__(self, parent=None):
        super().__init__(parent)
        self._keep = None  # the layout at the top of the body that is never scrolled out of view

    def keep_in_view(self, layout) -> None:
        """Make the dock at least as tall as ``layout`` (the first in the body) needs: the
        choices a click depends on (Segment's image, model, scope) are then always visible."""
        self._keep = layout
        self.updateGeometry()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        body = self.widget()
        need = body.minimumSizeHint().width() if body is not None else 0
        height = self.MIN_HEIGHT
        if self._keep is not None and body is not None and body.layout() is not None:
            height = max(height, self._keep.sizeHint().height() + body.layout().contentsMargins().top())
        return QSize(need + self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth(),
                     height + 2 * self.frameWidth())

    def sizeHint(self) -> QSize:  # noqa: N802
        # As tall as the whole body: a dock that has the room shows it all without scrolling.
        body = self.widget()
        height = body.heightForWidth(max(1, self.viewport().width())) if body.hasHeightForWidth() else -1
        height = height if height > 0 else body.sizeHint().height()
        return QSize(self.minimumSizeHint().width(), height + 2 * self.frameWidth())

    def eventFilter(self, obj, event) -> bool:  # noqa: N802
        # The body was laid out (shown, a section folded open, a longer text): the dock asks again.
        if obj is self.widget() and event.type() in (QEvent.Type.LayoutRequest, QEvent.Type.Show):
            self.updateGeometry()
        return super().eventFilter(obj, event)

    def viewportEvent(self, event) -> bool:  # noqa: N802
        if event.type() == QEvent.Type.LayoutRequest:  # the body's size hint changed
            self.updateGeometry()
        return super().viewportEvent(event)


def narrow_combo(combo, chars: int = 8, tip: str = ""):
    """A combo box that does not widen the dock to its longest item (a slide or model file name):
    it takes the width it is given, and its tooltip holds the whole current text (after ``tip``)."""
    from qtpy.QtWidgets import QComboBox

    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)
    combo.setToolTip(tip)
    combo.currentIndexChanged.connect(
        lambda _: combo.setToolTip(f"{tip}\n{full_text(combo)}" if tip else full_text(combo)))
    return combo


# The whole text of an item whose shown text is cut to its combo box's field (see elide_items).
FULL_TEXT = Qt.ItemDataRole.UserRole + 1


class _Elider(QObject):
    """Re-cuts a combo box's items to its field whenever the box is resized or items are added."""

    def __init__(self, combo):
        super().__init__(combo)
        self.combo = combo
        combo.installEventFilter(self)
        combo.model().rowsInserted.connect(lambda *_: elide_items(combo))

    def eventFilter(self, obj, event) -> bool:  # noqa: N802
        if obj is self.combo and event.type() in (QEvent.Type.Resize, QEvent.Type.Show):
            elide_items(self.combo)
        return False


def eliding_combo(combo):
    """A combo box whose long items (a model file, a slide's layer name: any length) are cut in
    the middle to fit its text field, so that their start and end both show; the whole text is
    the item's tooltip and :func:`full_text`."""
    combo._elider = _Elider(combo)
    return combo


def elide_items(combo) -> None:
    from qtpy.QtWidgets import QStyle, QStyleOptionComboBox

    opt = QStyleOptionComboBox()
    combo.initStyleOption(opt)
    field = combo.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, opt,
                                         QStyle.SubControl.SC_ComboBoxEditField, combo).width()
    if field <= 0:
        return
    metrics = combo.fontMetrics()
    blocked = combo.blockSignals(True)  # cutting the text changes no choice
    try:
        for i in range(combo.count()):
            full = combo.itemData(i, FULL_TEXT)
            if full is None:
                full = combo.itemText(i)
                combo.setItemData(i, full, FULL_TEXT)
                combo.setItemData(i, full, Qt.ItemDataRole.ToolTipRole)
            icon = 0 if combo.itemIcon(i).isNull() else combo.iconSize().width() + 4
            shown = metrics.elidedText(full, Qt.TextElideMode.ElideMiddle, field - icon)
            if shown != combo.itemText(i):
                combo.setItemText(i, shown)
    finally:
        combo.blockSignals(blocked)
    combo.update()


def full_text(combo, index: int | None = None) -> str:
    """The whole text of an item (the current one by default), cut or not."""
    index = combo.currentIndex() if index is None else index
    if index < 0:
        return ""
    full = combo.itemData(index, FULL_TEXT)
    return full if full is not None else combo.itemText(index)


def body_layout(body: QWidget) -> QVBoxLayout:
    """The vertical layout of a widget's scrolled body, with the narrow margins a dock needs."""
    layout = QVBoxLayout(body)
    layout.setContentsMargins(MARGIN, 2, MARGIN, MARGIN)
    return layout


# --- the base class -------------------------------------------------------------------------------
class DFAWidget(QWidget):
    """A dock widget of one viewer: ``viewer``, ``session``, ``status`` (a QLabel to lay out),
    ``worker`` (the running job or None), and a progress bridge from the job's thread.

    Subclasses put their main buttons in ``pinned`` (a QVBoxLayout under the status line, always
    in view) and lay out the rest in ``body`` (scrolled; see :func:`body_layout`), start jobs with
    :meth:`run_job`, and override :meth:`_on_progress` (UI thread, values sent by
    :meth:`report_progress`) and :meth:`_set_busy` (enable/disable their buttons).

    Arguments:
      napari_viewer: the viewer (napari passes it when the widget is docked).
      parent: optional Qt parent.
    """

    hint = ""  # the status line before anything happened
    cancelling_text = "Cancelling…"
    cancelled_text = "Cancelled."

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        warm_up_in_background()
        self.worker = None
        self._cancel = threading.Event()
        self._bridge = Bridge()
        self._bridge.progress.connect(self._on_progress)
        self._eta = Eta()
        self.status = QLabel(self.hint)
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status.setContentsMargins(MARGIN, 2, MARGIN, 2)
        # The main buttons, in view however short the dock; the rest scrolls in `body`.
        self.pinned = QVBoxLayout()
        self.pinned.setContentsMargins(MARGIN, 0, MARGIN, 0)
        self.body = QWidget()
        self.scroll = BodyScroll()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setWidget(self.body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(2)
        self.status_box = StatusBox(self.status)  # a long message scrolls, never pushes the buttons away
        outer.addWidget(self.status_box)
        outer.addLayout(self.pinned)
        outer.addWidget(self.scroll, 1)
        # A red message stays only while its problem does: re-checked when layers or the model change.
        self._problem = None
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            ev.connect(self._recheck)
        self.session.model_changed.connect(self._recheck)
        self.session.result_changed.connect(self._recheck)

    # --- jobs ------------------------------------------------------------------------------------
    def run_job(self, work, on_done):
        """Run ``work()`` in a thread worker, ``on_done(result)`` on the UI thread; errors and
        cancellation end up in the status line. Returns the worker."""
        self._cancel.clear()
        self._eta = Eta()
        self._set_busy(True)
        self.worker = start_worker(work, on_done=on_done, on_error=self._on_error,
                                   on_finished=self._on_finished)
        return self.worker

    def report_progress(self, *values) -> None:
        """From the worker thread: hand ``values`` to :meth:`_on_progress` on the UI thread."""
        self._bridge.progress.emit(values)

    def cancelled(self) -> bool:
        """Whether the user asked the running job to stop (the job's ``cancel`` callback)."""
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Ask the running job to stop at its next check."""
        self._cancel.set()
        self._say(self.cancelling_text)

    def _on_progress(self, values) -> None:
        pass

    def _set_busy(self, busy: bool) -> None:
        pass

    def _on_error(self, exc) -> None:
        if isinstance(exc, Cancelled):
            self._say(self.cancelled_text)
            return
        logger.debug("%s failed", type(self).__name__, exc_info=exc)
        self._say(error_text(exc), error=True)

    def _on_finished(self) -> None:
        self.worker = None
        self._set_busy(False)

    # --- status line -----------------------------------------------------------------------------
    def _say(self, text: str, *, error: bool = False, until=None) -> None:
        """Show ``text`` in the status line; an error is red and also a notification. Any message
        replaces the one before, so an old error goes as soon as the next action succeeds.

        ``until``: for an error, a function that raises :class:`DFAError` (or returns False) while
        the problem lasts; the error is cleared as soon as it stops doing so (checked whenever
        layers are added or removed and when the model or the segmented region changes)."""
        self.status.setText(text)
        self.status.setStyleSheet(ERROR_STYLE if error else "")
        self.status_box.set_text_changed()
        self._problem = until if error else None
        if error:
            notify(text, severity="warning")

    def _recheck(self, event=None) -> None:
        check = self._problem
        if check is None:
            return
        try:
            solved = check() is not False
        except DFAError:
            solved = False
        except Exception:  # a check must never break the widget
            logger.debug("problem check failed", exc_info=True)
            solved = False
        if solved and self._problem is check:
            self._say(self.ready_text())

    def ready_text(self) -> str:
        """What the status line says once an error is gone."""
        return self.hint
