"""Small helpers the three widgets share: the per-viewer session, recent models (image layers as
pyramids live in :mod:`._layers`),
class colours for label layers, messages, background workers.

Nothing here computes anything about tissue: that is :mod:`napari_dfa.inference`,
:mod:`napari_dfa.training` and :mod:`napari_dfa.model`.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# napari turns layer features into a pandas DataFrame; importing pandas (~0.3 s) when the widgets
# are docked keeps that out of the moment the first result is shown.
import pandas  # noqa: F401
from psygnal import Signal
from qtpy.QtCore import QObject
from qtpy.QtCore import Signal as QtSignal

from ..paths import cache_dir
from ._layers import (  # noqa: F401  (the widgets reach these through this module)
    LayerPyramid,
    image_layers,
    layer_mpp,
    layer_source_path,
    pick_image_layer,
    shapes_roi,
    to_rgb_uint8,
    visible_region,
)

logger = logging.getLogger(__name__)

DEMO = "demo"
IGNORE_NAME = "unlabelled"


# --- session: what the three widgets share for one viewer ------------------------------------
@dataclass
class RegionResult:
    """The last segmented region: enough to re-segment it, align layers on it and train on it."""

    image_layer: str
    level: int
    region: tuple[int, int, int, int]  # in `level` pixels
    downsample: float  # image-layer level-0 pixels per `level` pixel
    scale: tuple[float, float]  # world units per `level` pixel
    translate: tuple[float, float]  # world position of the region's top-left
    labels_layer: str
    whole_slide: bool = False
    store_path: str | None = None  # zarr labels store of a whole-slide result


class Session:
    """State shared by the Segment, Attention-bias and Fine-tune widgets of one viewer."""

    model_changed = Signal()
    result_changed = Signal()
    bias_changed = Signal()

    def __init__(self):
        self.segmenter = None
        self.model_source: str | None = None
        self.result: RegionResult | None = None
        # every model this session used, oldest first: {"label", "source", "segmenter"}
        self.versions: list[dict] = []

    def set_model(self, segmenter, source: str, *, label: str | None = None) -> None:
        self.segmenter = segmenter
        self.model_source = str(source)
        if not any(v["segmenter"] is segmenter for v in self.versions):
            self.versions.append({"label": label or Path(str(source)).name, "source": str(source),
                                  "segmenter": segmenter})
        self.model_changed.emit()

    def set_result(self, result: RegionResult) -> None:
        self.result = result
        self.result_changed.emit()



_sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer) -> Session:
    """The one :class:`Session` of this viewer (created on first use)."""
    try:
        return _sessions[viewer]
    except KeyError:
        s = _sessions[viewer] = Session()
        return s


def load_into_session(viewer, source: str):
    """Load a model by name or path (may raise CheckpointError) and make it the session's model."""
    from ..model import load_model

    segmenter = load_model(source)
    session_for(viewer).set_model(segmenter, source)
    if source != DEMO:
        add_recent_model(source)
    return segmenter


# --- recent model files ----------------------------------------------------------------------
def _recent_file() -> Path:
    return cache_dir() / "recent_models.json"


def recent_models() -> list[str]:
    try:
        items = json.loads(_recent_file().read_text())
    except (OSError, ValueError):
        return []
    return [p for p in items if isinstance(p, str) and Path(p).exists()][:8]


def add_recent_model(path: str) -> None:
    items = [str(path)] + [p for p in recent_models() if p != str(path)]
    try:
        _recent_file().parent.mkdir(parents=True, exist_ok=True)
        _recent_file().write_text(json.dumps(items[:8]))
    except OSError as exc:  # a read-only home must not break segmentation
        logger.warning("cannot remember recent models in %s: %s", _recent_file(), exc)


# --- class colours ---------------------------------------------------------------------------
def class_colormap(colors):
    """DirectLabelColormap: 0 transparent, label k + 1 the colour of class k."""
    from napari.utils.colormaps import DirectLabelColormap

    color_dict = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    for k, c in enumerate(colors):
        color_dict[k + 1] = tuple(float(v) / 255 for v in c[:3]) + (1.0,)
    return DirectLabelColormap(color_dict=color_dict)


def class_features(names):
    """Per-label features with a ``class`` column, so the status bar names the class on hover."""
    import pandas as pd

    return pd.DataFrame({"index": np.arange(len(names) + 1), "class": [IGNORE_NAME, *names]})


def put_labels_layer(viewer, name: str, data, *, scale, translate, segmenter, multiscale=False,
                     metadata=None, units=None):
    """Add the labels layer ``name`` or replace its data and placement in place."""
    kwargs = dict(scale=scale, translate=translate)
    if units is not None:
        kwargs["units"] = units  # same units as the image, or napari ignores them all
    if name in viewer.layers:
        layer = viewer.layers[name]
        if bool(layer.multiscale) == bool(multiscale):
            layer.data = data
            layer.scale, layer.translate = scale, translate
            layer.colormap = class_colormap(segmenter.class_colors)
            layer.features = class_features(segmenter.class_names)
            if metadata:
                layer.metadata.update(metadata)
            return layer
        viewer.layers.remove(layer)
    return viewer.add_labels(data, name=name, multiscale=multiscale, opacity=0.5,
                             colormap=class_colormap(segmenter.class_colors),
                             features=class_features(segmenter.class_names),
                             metadata=dict(metadata or {}), **kwargs)


# --- messages and background work ------------------------------------------------------------
def notify(message: str, *, severity: str = "info") -> None:
    from napari.utils import notifications

    logger.info(message)
    {"info": notifications.show_info, "warning": notifications.show_warning,
     "error": notifications.show_error}[severity](message)


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


_threads_set = False


def leave_a_core_for_the_ui() -> None:
    """Give torch one core less than the machine has (once per process): with every core busy in
    torch's intra-op pool, the UI thread waits for a CPU and napari stutters (measured in
    benchmarks/bench_gui.py). ``NAPARI_DFA_GUI_THREADS`` overrides the number."""
    global _threads_set
    if _threads_set:
        return
    _threads_set = True
    import os

    import torch

    want = os.environ.get("NAPARI_DFA_GUI_THREADS")
    n = int(want) if want else max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) - 1))
    if n != torch.get_num_threads():
        logger.info("GUI: torch uses %d thread(s), leaving a core for the UI", n)
        torch.set_num_threads(n)


_warm = None


def warm_up() -> None:
    """Import and initialise, in a background thread while the user opens a slide, what the first
    Segment / Fine-tune click would otherwise load in its worker: the first AdamW imports ~800
    modules (torch.distributed), the first dask compute ~200, and module initialisation holds the
    GIL, which froze the UI for up to 0.5 s (found with faulthandler in benchmarks/bench_gui.py)."""
    global _warm
    if _warm is not None:
        return
    import threading

    def run():
        try:
            import dask.array as da
            import torch

            from .. import inference, training  # noqa: F401

            leave_a_core_for_the_ui()
            p = torch.nn.Parameter(torch.zeros(4))
            opt = torch.optim.AdamW([p], lr=1e-3)
            (p * 2).sum().backward()
            opt.step()
            da.from_array(np.zeros((8, 8)), chunks=4).sum().compute()
        except Exception:  # a warm-up must never break the widget
            logger.debug("warm-up failed", exc_info=True)

    _warm = threading.Thread(target=run, name="napari-dfa-warm-up", daemon=True)
    _warm.start()


def start_worker(fn, *, on_done, on_error, on_finished=None):
    """Run ``fn()`` in a napari thread worker; results and errors come back on the UI thread."""
    from napari.qt.threading import create_worker

    leave_a_core_for_the_ui()

    connect = {"returned": on_done, "errored": on_error}
    if on_finished is not None:
        connect["finished"] = on_finished
    return create_worker(fn, _connect=connect)


def error_text(exc: BaseException) -> str:
    """One line for the user: our errors say what to do; anything else gets its type named."""
    from ..errors import DFAError

    if isinstance(exc, DFAError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
