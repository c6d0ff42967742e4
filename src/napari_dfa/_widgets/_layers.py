"""Image layers as pyramids: any napari image layer (ours or another reader's, multiscale or not)
as RGB uint8 levels, the part of it in view, a drawn ROI, and where a result goes on it; and the
part of a result under review that fine-tuning replays, segments again and writes back.

No Qt, but napari layers: call these on the UI thread (layers are not thread-safe).
"""

from __future__ import annotations

import logging

import numpy as np

from ..corrections.workflow import ReplaySpec, WriteBack
from ..errors import DataError
from ..slide import nearest_level

logger = logging.getLogger(__name__)

MAX_REGION_PIXELS = 64_000_000  # a visible/ROI region larger than this at full resolution drops a level


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
        """RGB pixels of ``region`` (y0, x0, h, w) at level ``index``, read by the calling (worker)
        thread: a training region is small, and dask's pool would only add threads that compete
        with the UI thread for the GIL."""
        y0, x0, h, w = (int(v) for v in region)
        return np.asarray(self.level(index)[y0:y0 + h, x0:x0 + w].compute(scheduler="synchronous"))

    def level_mpp(self, index: int) -> float | None:
        return None if self.mpp is None else self.mpp * self.downsamples[index]

    def level_for(self, model_mpp: float | None, region0=None) -> int:
        """The level whose µm/px is nearest the model's; with unknown mpp, the finest level at which
        the level-0 ``region0`` (y0, x0, h, w) stays below :data:`MAX_REGION_PIXELS`."""
        if self.mpp and model_mpp:
            return nearest_level([self.level_mpp(i) for i in range(len(self.raw))], model_mpp)
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


# --- the part of a result under review (inputs of the fine-tune workflow) ---------------------------
def review_target(viewer, result, recorder) -> tuple[int, tuple[int, int, int, int]] | None:
    """(level, region) to segment again after fine-tuning: the segmented region, or for a
    whole-slide result the patch being corrected; None when there is nothing to refresh.

    Arguments:
      result: the session's last :class:`~._session.RegionResult` (or None).
      recorder: the :class:`~._recorder.CorrectionRecorder` of the correction layer (or None).
    """
    if result is None or result.image_layer not in viewer.layers:
        return None
    if not result.whole_slide:
        return result.level, result.region
    if recorder is None or recorder.layer.name not in viewer.layers:
        return None
    p = recorder.patch
    return (p.level, p.region) if p.level == result.level else None


def replay_spec(viewer, result, target, recorder) -> ReplaySpec | None:
    """The current labels and corrections of ``target`` (level, region), to replay.

    Copied now, except the labels of a whole-slide result: a zarr read, which the workflow does
    in the worker.
    """
    if target is None or result.labels_layer not in viewer.layers:
        return None
    level, region = target
    layer = viewer.layers[result.labels_layer]
    corrected = np.zeros(region[2:], np.uint8)
    if recorder is not None and (recorder.patch.level, recorder.patch.region) == tuple(target):
        corrected = np.array(recorder.layer.data, copy=True)
    if not result.whole_slide:
        return ReplaySpec(level, region, np.array(layer.data, copy=True), corrected)
    base = layer.data[0] if layer.multiscale else layer.data
    y0, x0 = region[0] - result.region[0], region[1] - result.region[1]
    return ReplaySpec(level, region, lambda: np.asarray(base[y0:y0 + region[2], x0:x0 + region[3]]), corrected)


def writeback_spec(viewer, result, target) -> WriteBack | None:
    """Where a re-segmented ``target`` of a whole-slide result goes: its labels store, at the
    target's offset in it; None for an in-memory region result."""
    if target is None or not result.whole_slide or result.labels_layer not in viewer.layers:
        return None
    return WriteBack(store=str(result.store_path),
                     offset=(target[1][0] - result.region[0], target[1][1] - result.region[1]))


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
