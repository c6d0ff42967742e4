"""Small helpers the three widgets share: the per-viewer session, image layers as pyramids,
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

from ..corrections import cache_dir
from ..errors import DataError

logger = logging.getLogger(__name__)

DEMO = "demo"
IGNORE_NAME = "unlabelled"
MAX_REGION_PIXELS = 64_000_000  # a visible/ROI region larger than this at full resolution drops a level


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


# --- image layers as pyramids ----------------------------------------------------------------
def image_layers(viewer) -> list:
    from napari.layers import Image

    return [layer for layer in viewer.layers if isinstance(layer, Image)]


def pick_image_layer(viewer, name: str | None = None):
    """The named image layer, else the selected one, else the top one; DataError if none."""
    layers = image_layers(viewer)
    if not layers:
        raise DataError("No slide open: open a slide (File > Open) or the sample "
                        "(File > Open Sample > napari-dfa) first")
    if name:
        for layer in layers:
            if layer.name == name:
                return layer
    active = viewer.layers.selection.active
    return active if active in layers else layers[-1]


class LayerPyramid:
    """Any napari image layer (ours or another reader's, multiscale or not) as RGB uint8 levels.

    Arguments:
      layer: a napari Image layer, 2-D grey or RGB(A), any dtype, one array or a pyramid.
    """

    def __init__(self, layer):
        levels = list(layer.data) if layer.multiscale else [layer.data]
        ndim_yx = levels[0].ndim - (1 if layer.rgb else 0)
        if ndim_yx != 2:
            raise DataError(f"layer {layer.name!r}: only 2-D images (grey or RGB) can be segmented, "
                            f"this one has shape {tuple(levels[0].shape)}")
        self.layer = layer
        self.raw = levels
        self.rgb = layer.rgb
        y0 = float(levels[0].shape[0])
        self.downsamples = [y0 / float(a.shape[0]) for a in levels]
        self.shapes = [tuple(int(s) for s in a.shape[:2]) for a in levels]
        self.scale = tuple(float(s) for s in layer.scale[-2:])
        self.translate = tuple(float(t) for t in layer.translate[-2:])
        self.mpp = layer_mpp(layer)
        self.path = layer_source_path(layer)
        try:
            self.units = tuple(layer.units[-2:])
        except (AttributeError, TypeError):
            self.units = None
        self.slide = self._matching_slide(layer)

    def _matching_slide(self, layer):
        """Our reader's Slide behind the layer, when its levels are the layer's levels: inference
        then reads tiles and the tissue mask from the slide's own pyramid."""
        slide = (layer.metadata or {}).get("slide")
        try:
            shapes = [tuple(int(s) for s in a.shape[:2]) for a in slide.levels]
        except AttributeError:
            return None
        return slide if shapes == self.shapes else None

    def source(self, index: int):
        """What to hand :func:`napari_dfa.inference.segment`: ``(slide_or_array, level)``."""
        return (self.slide, index) if self.slide is not None else (self.level(index), 0)

    def level(self, index: int):
        """Level ``index`` as a lazy dask array Y×X×3 uint8."""
        import dask.array as da

        a = self.raw[index]
        a = a if isinstance(a, da.Array) else da.from_array(a, chunks=_chunks(a))
        return to_rgb_uint8(a, rgb=self.rgb)

    def read(self, index: int, region) -> np.ndarray:
        y0, x0, h, w = (int(v) for v in region)
        return np.asarray(self.level(index)[y0:y0 + h, x0:x0 + w].compute())

    def level_mpp(self, index: int) -> float | None:
        return None if self.mpp is None else self.mpp * self.downsamples[index]

    def level_for(self, model_mpp: float | None, region0=None) -> int:
        """The level whose µm/px is nearest the model's; with unknown mpp, the finest level at which
        the level-0 ``region0`` (y0, x0, h, w) stays below :data:`MAX_REGION_PIXELS`."""
        if self.mpp and model_mpp:
            errs = [abs(np.log(self.level_mpp(i) / model_mpp)) for i in range(len(self.raw))]
            return int(np.argmin(errs))
        if region0 is None:
            return 0
        for i, ds in enumerate(self.downsamples):
            if (region0[2] / ds) * (region0[3] / ds) <= MAX_REGION_PIXELS:
                return i
        return len(self.raw) - 1

    def to_level(self, index: int, region0, pad: int = 0) -> tuple[int, int, int, int]:
        """A level-0 region in pixels of level ``index``, padded by ``pad`` and clipped to it."""
        ds = self.downsamples[index]
        H, W = self.shapes[index]
        y0 = max(0, int(np.floor(region0[0] / ds)) - pad)
        x0 = max(0, int(np.floor(region0[1] / ds)) - pad)
        y1 = min(H, int(np.ceil((region0[0] + region0[2]) / ds)) + pad)
        x1 = min(W, int(np.ceil((region0[1] + region0[3]) / ds)) + pad)
        if y1 <= y0 or x1 <= x0:
            raise DataError(f"layer {self.layer.name!r}: the region {tuple(region0)} lies outside the image")
        return (y0, x0, y1 - y0, x1 - x0)

    def placement(self, index: int, region) -> tuple[tuple[float, float], tuple[float, float]]:
        """(scale, translate) that put level-``index`` pixels of ``region`` on this layer in the world."""
        ds = self.downsamples[index]
        scale = (self.scale[0] * ds, self.scale[1] * ds)
        translate = (self.translate[0] + region[0] * scale[0], self.translate[1] + region[1] * scale[1])
        return scale, translate

    def world_to_level0(self, world_yx) -> np.ndarray:
        w = np.asarray(world_yx, dtype=float)
        return (w - np.asarray(self.translate)) / np.asarray(self.scale)


def visible_region(viewer, pyramid: LayerPyramid) -> tuple[int, int, int, int]:
    """The part of the image in view now, as a level-0 region (y0, x0, h, w).

    From the camera (centre, zoom) and the canvas size: napari's own ``corner_pixels`` of a
    multiscale layer are expanded to chunk boundaries and only grow while panning, so they
    overestimate what is on screen.
    """
    h, w = viewer.canvas.size
    zoom = float(viewer.camera.zoom)
    cy, cx = viewer.camera.center[-2:]
    half = np.array([h, w], dtype=float) / (2 * zoom)
    lo = pyramid.world_to_level0(np.array([cy, cx]) - half)
    hi = pyramid.world_to_level0(np.array([cy, cx]) + half)
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    H, W = pyramid.shapes[0]
    y0, x0 = max(0, int(np.floor(lo[0]))), max(0, int(np.floor(lo[1])))
    y1, x1 = min(H, int(np.ceil(hi[0]))), min(W, int(np.ceil(hi[1])))
    if y1 <= y0 or x1 <= x0:
        raise DataError(f"layer {pyramid.layer.name!r} is not in view: pan or zoom to the tissue first")
    return (y0, x0, y1 - y0, x1 - x0)


def shapes_roi(viewer, pyramid: LayerPyramid) -> tuple[int, int, int, int]:
    """Level-0 bounding box of the shapes in the selected (else the top) Shapes layer."""
    from napari.layers import Shapes

    layers = [layer for layer in viewer.layers if isinstance(layer, Shapes) and len(layer.data)]
    if not layers:
        raise DataError("No ROI drawn: add a Shapes layer and draw a rectangle or polygon over the tissue")
    active = viewer.layers.selection.active
    layer = active if active in layers else layers[-1]
    shapes = [layer.data[i] for i in (layer.selected_data or range(len(layer.data)))]
    pts = np.concatenate([np.asarray(s)[:, -2:] for s in shapes])
    world = pts * np.asarray(layer.scale[-2:]) + np.asarray(layer.translate[-2:])
    lo, hi = pyramid.world_to_level0(world.min(axis=0)), pyramid.world_to_level0(world.max(axis=0))
    H, W = pyramid.shapes[0]
    y0, x0 = max(0, int(np.floor(lo[0]))), max(0, int(np.floor(lo[1])))
    y1, x1 = min(H, int(np.ceil(hi[0]))), min(W, int(np.ceil(hi[1])))
    if y1 <= y0 or x1 <= x0:
        raise DataError(f"the ROI in {layer.name!r} does not overlap the image {pyramid.layer.name!r}")
    return (y0, x0, y1 - y0, x1 - x0)


def layer_mpp(layer) -> float | None:
    """µm per level-0 pixel of a layer: our reader's metadata, else a µm-scaled layer."""
    md = layer.metadata or {}
    for key in ("mpp", "microns_per_pixel"):
        if md.get(key):
            return float(md[key])
    slide = md.get("slide")
    if slide is not None and getattr(slide, "mpp", None):
        return float(slide.mpp)
    try:
        units = [str(u) for u in layer.units[-2:]]
    except (AttributeError, TypeError):
        units = []
    if units and all(u in ("micrometer", "micron", "µm", "um") for u in units):
        return float(layer.scale[-1])
    return None


def layer_source_path(layer) -> str:
    """The file a layer was read from, or a stable stand-in for layers made in code."""
    md = layer.metadata or {}
    for candidate in (getattr(layer.source, "path", None), md.get("path"),
                      getattr(md.get("slide"), "path", None)):
        if candidate:
            return str(candidate)
    return f"layer:{layer.name}"


def to_rgb_uint8(a, *, rgb: bool):
    """Grey / 16-bit / float / RGBA dask arrays as RGB uint8, lazily."""
    import dask.array as da

    if rgb and a.shape[-1] == 4:
        a = a[..., :3]
    if a.dtype != np.uint8:
        if a.dtype == np.uint16:
            a = (a // 257).astype(np.uint8)
        elif np.issubdtype(a.dtype, np.floating):
            a = (da.clip(a, 0, 1) * 255).astype(np.uint8)  # napari's float convention: [0, 1]
        else:
            a = da.clip(a, 0, 255).astype(np.uint8)
    if not rgb:
        a = da.stack([a, a, a], axis=-1)
    return a


def _chunks(a):
    return tuple(min(s, 1024) if i < 2 else s for i, s in enumerate(a.shape))


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
