"""Image layers as pyramids: any napari image layer (ours or another reader's, multiscale or not)
as RGB uint8 levels, the part of it in view, a drawn ROI, and where a result goes on it; and the
part of a result under review that fine-tuning replays, segments again and writes back.

An RGB image that a reader split into three grey channel layers (napari-ome-zarr opens a (c, y, x)
OME-Zarr so) is stacked back into one RGB pyramid (:func:`layer_pyramid`); one channel alone is
refused, never segmented as if it were colour.

No Qt, but napari layers: call these on the UI thread (layers are not thread-safe). (Over 450
lines: everything here reads napari layers for the widgets — the pyramid, the split-channel
detection it refuses or stacks by, the regions and the replay / write-back specs built on it; the
channel detection, ~120 lines, is the seam to cut next if it grows.)
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np

from ..arrays import compute_local
from ..corrections.workflow import ReplaySpec, WriteBack
from ..errors import DataError
from ..slide import level_downsample, nearest_level, region_to_level, to_rgb_uint8

logger = logging.getLogger(__name__)

MAX_REGION_PIXELS = 64_000_000  # a visible/ROI region larger than this at full resolution drops a level


def image_layers(viewer) -> list:
    """The image layers a user can segment: not the ones napari-dfa derived from a result (the
    stain-matched view, ``metadata["napari_dfa"]["derived"]``)."""
    from napari.layers import Image

    return [layer for layer in viewer.layers if isinstance(layer, Image)
            and not ((layer.metadata or {}).get("napari_dfa") or {}).get("derived")]


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
      layer: a napari Image layer, 2-D grey or RGB(A), any dtype, one array or a pyramid; a grey
        layer that looks like one channel of a colour image is refused (see :func:`layer_pyramid`).
    """

    def __init__(self, layer, *, placement_only: bool = False):
        # placement_only: where a result goes on the layer (scale, levels), its pixels unread, so a
        # channel of a split RGB image (segmented with its siblings) is not refused here.
        why = None if layer.rgb or placement_only else channel_evidence(layer)
        if why:
            raise DataError(lone_channel_message(layer, why))
        self._setup(layer, list(layer.data) if layer.multiscale else [layer.data], layer.rgb)

    def _setup(self, layer, levels, rgb: bool) -> None:
        ndim_yx = levels[0].ndim - (1 if rgb else 0)
        if ndim_yx != 2:
            raise DataError(f"layer {layer.name!r}: only 2-D images (grey or RGB) can be segmented, "
                            f"this one has shape {tuple(levels[0].shape)}")
        self.layer = layer
        self.raw = levels
        self.rgb = rgb
        self.shapes = [tuple(int(s) for s in a.shape[:2]) for a in levels]
        self.slide = self._matching_slide(layer)
        # Our reader's Slide has the file's own (or, for the levels it built, exact) downsamples:
        # with them a ROI crops to the pixels the CLI crops it to. Other layers: as a Slide would.
        self.downsamples = (list(self.slide.downsamples) if self.slide is not None else
                            [level_downsample(self.shapes[0], shape) for shape in self.shapes])
        self.scale = tuple(float(s) for s in layer.scale[-2:])
        self.translate = tuple(float(t) for t in layer.translate[-2:])
        self.mpp = layer_mpp(layer)
        self.path = layer_source_path(layer)
        try:
            self.units = tuple(layer.units[-2:])
        except (AttributeError, TypeError):
            self.units = None

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
        return to_rgb_uint8(a if self.rgb else a[..., None], hi=None)  # napari's fixed ranges, alpha dropped

    def read(self, index: int, region) -> np.ndarray:
        """RGB pixels of ``region`` (y0, x0, h, w) at level ``index``, read by the calling (worker)
        thread: a training region is small, and dask's pool would only add threads that compete
        with the UI thread for the GIL."""
        y0, x0, h, w = (int(v) for v in region)
        return compute_local(self.level(index)[y0:y0 + h, x0:x0 + w])

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
        box = region_to_level(region0, self.downsamples[index], self.shapes[index], pad)
        if box is None:
            raise DataError(f"layer {self.layer.name!r}: the region {tuple(region0)} lies outside the image")
        return box

    def placement(self, index: int, region) -> tuple[tuple[float, float], tuple[float, float]]:
        """(scale, translate) that put level-``index`` pixels of ``region`` on this layer in the world."""
        ds = self.downsamples[index]
        scale = (self.scale[0] * ds, self.scale[1] * ds)
        translate = (self.translate[0] + region[0] * scale[0], self.translate[1] + region[1] * scale[1])
        return scale, translate

    def world_to_level0(self, world_yx) -> np.ndarray:
        w = np.asarray(world_yx, dtype=float)
        return (w - np.asarray(self.translate)) / np.asarray(self.scale)


# --- an RGB image split into channel layers ------------------------------------------------------
# napari-ome-zarr (channel_axis) and other readers open an RGB (c, y, x) image as three grey layers:
# the same shape, scale and position, names the reader's name deduplicated by napari ("x", "x [1]",
# "x [2]") or ending in a channel ("x R", "x_green", "x c2"), colormaps from the file (OMERO
# colours) or napari's cyan/magenta/yellow. One of them alone is grey, not tissue colour.

_DEDUP = re.compile(r"^(?P<base>.*?) \[(?P<n>\d+)\]$")  # napari's suffix for a repeated name
_TOKEN = re.compile(r"^(?P<base>.*?)(?:^|[\s_\-:./|(\[]+)(?P<tok>red|green|blue|r|g|b|c\s?\d+|ch\s?\d+|"
                    r"channel[\s_\-]?\d+)[)\]]?$", re.IGNORECASE)
_COLOURS = {"red": 0, "r": 0, "green": 1, "g": 1, "blue": 2, "b": 2}


@dataclass(frozen=True)
class _ChannelName:
    base: str          # the name without channel token and napari's " [n]"
    colour: int | None  # 0 R, 1 G, 2 B from a colour word in the name
    index: int | None   # c0 / ch1 / channel_2 in the name
    copy: int           # napari's " [n]" (0 without)
    letter: bool        # the token is a lone r / g / b (only trusted beside its siblings)


def _parse_name(name: str) -> _ChannelName:
    name, copy = str(name).strip(), 0
    m = _DEDUP.match(name)
    if m:
        name, copy = m["base"], int(m["n"])
    m = _TOKEN.match(name)
    if not m:
        return _ChannelName(name.casefold(), None, None, copy, False)
    tok = m["tok"].casefold()
    digits = re.sub(r"\D", "", tok)
    colour = _COLOURS.get(tok)
    return _ChannelName(m["base"].strip().casefold(), colour, int(digits) if digits and colour is None else None,
                        copy, tok in ("r", "g", "b"))


def _colormap_hue(layer) -> tuple[int | None, bool]:
    """(0/1/2 when the colormap runs from black to pure red/green/blue, else None; whether it is a
    single-hue non-grey colormap at all, which napari only gives a layer split from channels)."""
    try:
        colors = np.asarray(layer.colormap.colors, dtype=float)[:, :3]
    except (AttributeError, TypeError, ValueError):
        return None, False
    if len(colors) < 2 or colors[0].max() > 0.1:
        return None, False
    end = colors[-1]
    if end.max() - end.min() < 0.5:  # grey / white: an ordinary grey image
        return None, False
    primary = int(np.argmax(end)) if sorted(end)[1] < 0.25 else None
    return primary, True


def _metadata_channel(layer) -> int | str | None:
    md = layer.metadata or {}
    for key in ("channel", "channel_index", "channel_name"):
        if md.get(key) not in (None, ""):
            return md[key]
    return None


def channel_evidence(layer) -> str | None:
    """Why a grey layer looks like one channel of a colour image (its name, colormap or metadata),
    or None. A lone r/g/b letter or napari's " [n]" alone is no evidence."""
    parsed = _parse_name(layer.name)
    if parsed.colour is not None and not parsed.letter:
        return f"its name ends in the channel {['red', 'green', 'blue'][parsed.colour]!r}"
    if parsed.index is not None:
        return f"its name ends in channel {parsed.index}"
    primary, single_hue = _colormap_hue(layer)
    if single_hue:
        return f"its colormap is {['red', 'green', 'blue'][primary] if primary is not None else 'one hue'}"
    if _metadata_channel(layer) is not None:
        return f"its metadata names channel {_metadata_channel(layer)!r}"
    return None


def _geometry(layer) -> tuple:
    levels = list(layer.data) if layer.multiscale else [layer.data]
    return (tuple(tuple(int(v) for v in a.shape) for a in levels), str(levels[0].dtype),
            tuple(np.round(np.asarray(layer.scale[-2:], float), 9)),
            tuple(np.round(np.asarray(layer.translate[-2:], float), 9)))


def _source(layer) -> str | None:
    path = getattr(getattr(layer, "source", None), "path", None)
    return str(path) if path else None


def channel_siblings(layers, layer) -> list:
    """The grey layers that, with ``layer``, were split from one image: same shape, dtype, scale and
    position, and the same file or the same name apart from a channel token / napari's " [n]".
    ``layer`` alone when it has none (order as in ``layers``)."""
    if layer.rgb:
        return [layer]
    geometry, parsed, source = _geometry(layer), _parse_name(layer.name), _source(layer)
    out = []
    for other in layers:
        if other is layer:
            out.append(other)
            continue
        if getattr(other, "rgb", True) or not hasattr(other, "colormap") or _geometry(other) != geometry:
            continue
        same_file = source is not None and _source(other) == source
        if same_file or _parse_name(other.name).base == parsed.base:
            out.append(other)
    return out


def rgb_order(group) -> list | None:
    """``group`` (three channel layers) as [R, G, B], from colour words in their names, else their
    colormaps (a file's OMERO colours), else channel numbers in their names, else napari's " [n]"
    order (a split keeps the file's channel order: 0 = R); None when none of these orders them."""
    if len(group) != 3:
        return None
    names = [_parse_name(layer.name) for layer in group]
    for roles in ([n.colour for n in names], [_colormap_hue(layer)[0] for layer in group],
                  [n.index for n in names], [n.copy for n in names]):
        if None not in roles and len(set(roles)) == 3:
            return [layer for _, layer in sorted(zip(roles, group), key=lambda t: t[0])]
    return None


def lone_channel_message(layer, why: str) -> str:
    return (f"Layer {layer.name!r} is one channel of a colour image ({why}): one channel is grey, not H&E, so "
            "it is not segmented alone. Open the image as one RGB layer (File > Open with the napari-dfa "
            "reader), or keep its three channels open as layers of the same shape, scale and position: the "
            "Segment widget uses them together.")


def layer_pyramid(viewer, layer) -> "LayerPyramid":
    """The pyramid to segment for ``layer``: the layer itself, or, when it is one channel of an RGB
    image split into channel layers, the three stacked in R, G, B order. DataError when it is a
    channel whose RGB siblings cannot be found or ordered."""
    if layer.rgb:
        return LayerPyramid(layer)
    group = channel_siblings(image_layers(viewer), layer)
    if len(group) > 1 and not any(channel_evidence(g) for g in group):
        group = [layer]  # e.g. one grey image opened twice ("x", "x [1]"): nothing says channels
    if len(group) == 1:
        return LayerPyramid(layer)  # refuses it if it still looks like a channel
    names = ", ".join(repr(g.name) for g in group)
    if len(group) != 3:
        raise DataError(f"Layer {layer.name!r} is one of {len(group)} channel layers of one image ({names}); "
                        "napari-dfa segments RGB brightfield images, which have three channels (R, G, B). "
                        "Open the image as one RGB layer, or keep only its R, G and B channels open.")
    ordered = rgb_order(group)
    if ordered is None:
        raise DataError(f"Layers {names} look like the channels of one image, but which is red, green and blue "
                        "is not known; end their names in R, G and B (or give them the colormaps red, green and "
                        "blue), or open the image as one RGB layer.")
    return SplitChannelPyramid(ordered)


class SplitChannelPyramid(LayerPyramid):
    """An RGB image split into three grey channel layers, as one RGB pyramid (stacked lazily per
    level). ``layer`` is the red channel's layer: results are placed and named on it.

    Arguments:
      layers: the [R, G, B] layers (same shape, dtype, scale and position).
    """

    def __init__(self, layers):
        import dask.array as da

        per_channel = [list(layer.data) if layer.multiscale else [layer.data] for layer in layers]
        levels = [da.stack([a if isinstance(a, da.Array) else da.from_array(a, chunks=_chunks(a))
                            for a in arrays], axis=-1) for arrays in zip(*per_channel)]
        self._setup(layers[0], levels, rgb=True)
        self.channels = list(layers)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.channels]


def recoloured_levels(pyramid: LayerPyramid, level: int, region, stain, *, whole: bool = False) -> list:
    """What the model saw of a stain-matched result: ``region`` (y0, x0, h, w at ``level``) of
    ``pyramid`` recoloured by ``stain`` (a :class:`~napari_dfa.model.stain.StainMatch`), lazily
    (dask, block by block, as napari asks for them). ``whole``: with the coarser levels after it,
    for a multiscale layer of a whole-slide result."""
    import math

    y0, x0, h, w = (int(v) for v in region)
    out = []
    for i in range(level, len(pyramid.raw) if whole else level + 1):
        f = pyramid.downsamples[i] / pyramid.downsamples[level]
        a = pyramid.level(i)[int(y0 // f):math.ceil((y0 + h) / f), int(x0 // f):math.ceil((x0 + w) / f)]
        out.append(a.map_blocks(stain, dtype=np.uint8))
    return out


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
    return ReplaySpec(level, region, lambda: labels_shown(layer, result, region), corrected)


def labels_shown(layer, result, region) -> np.ndarray:
    """The labels ``layer`` (``result``'s labels layer) shows over ``region`` (y0, x0, h, w in the
    result's level pixels), read now (a zarr read for a whole-slide result)."""
    base = layer.data[0] if layer.multiscale else layer.data
    y0, x0 = region[0] - result.region[0], region[1] - result.region[1]
    return np.asarray(base[y0:y0 + region[2], x0:x0 + region[3]])


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


def _chunks(a):
    return tuple(min(s, 1024) if i < 2 else s for i, s in enumerate(a.shape))
