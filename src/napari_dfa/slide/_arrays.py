"""Lazy pixel plumbing shared by the slide backends (no Qt, no napari).

Three jobs, all lazy (nothing here reads pixels until a dask chunk is computed):

- :class:`GuardedArray` wraps whatever reads a stored level (a zarr array over tifffile's store, a
  zarr array of an OME-Zarr, a memory map, an OpenSlide tile reader) so that a failure while a
  chunk is read (truncated file, corrupt tile, vanished file) becomes one :class:`SlideError`
  naming the file, even deep inside ``dask.compute``.
- :func:`to_rgb_uint8` turns any stored layout (``YX``, ``YXS``, ``SYX``/``CYX``, ``TCZYX``) and
  dtype (bool, 8/16/32-bit, float) into ``Y×X×3 uint8``; the widgets turn napari layers with it too
  (``hi=None``: napari's fixed ranges, see the function).
- :func:`coarsen_pyramid` builds the missing levels of a flat image by 2×2 means.

Intensity scaling of non-8-bit data (documented choice): a per-slide linear map ``v * 255 / hi``,
clipped to ``[0, 255]``, with ``lo`` fixed at 0 so the colour balance is kept and glass stays white.
``hi`` is the 99.9th percentile of the *smallest stored level* when that level has at most
:data:`PERCENTILE_MAX_PIXELS` pixels (so 12-bit data in a 16-bit container is not rendered nearly
black, and the read is bounded whatever the slide size); otherwise the dtype maximum for integers
and 1.0 for floats. Never level 0 of a large slide.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import dask.array as da
import numpy as np

from ..arrays import compute_local
from ..errors import SlideError
from .levels import level_downsample

logger = logging.getLogger(__name__)

# The smallest stored level is read at open to find the intensity range of non-8-bit data only when
# it is at most this many pixels (~4 Mpx: a few MB, a few ms).
PERCENTILE_MAX_PIXELS = 4 * 1024 * 1024
# Levels built by coarsening stop once the longer side is at most this many pixels.
PYRAMID_MIN_SIZE = 1024
# Target dask chunk edge: napari and the tiler both read ~1k tiles.
CHUNK_TARGET = 1024
# Every rechunk here passes method="tasks": dask otherwise imports dask.distributed (~0.3 s) to
# weigh its p2p method, which would make the first open of a session slow for no benefit.

_names = itertools.count()


class SlideLayoutError(SlideError):
    """A readable image that is not a 2-D RGB/grey slide (a z-stack, many fluorescence channels...).

    The napari reader declines such files so that another reader can open them.
    """


class GuardedArray:
    """Array-like over a stored level whose reads raise :class:`SlideError` naming the file.

    Arguments:
      path: the slide file, named in every error message.
      shape, dtype: of the stored level, known from metadata.
      open_level: zero-argument callable returning an object supporting ``__getitem__`` with a
        tuple of slices (a zarr array, a memmap, ...). Called lazily on the first read and again
        after unpickling, so a dask graph can be shipped to another process (dask.distributed).
      what: words for the level in error messages, e.g. ``"level 2"``.
    """

    def __init__(self, *, path: Path, shape: tuple, dtype, open_level: Callable[[], Any], what: str):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self._open_level = open_level
        self._what = what
        self._array = None

    def __getitem__(self, key):
        try:
            if self._array is None:
                self._array = self._open_level()
            simple, rest = _split_key(key, self.shape)
            out = np.asarray(self._array[simple])
            if rest is not None:
                out = out[rest]
        except (SlideError, MemoryError):
            raise
        except Exception as exc:  # a decoder / IO failure: the file is damaged (or was closed)
            raise SlideError(
                f"{self.path}: cannot read pixels of {self._what} at {_fmt_key(key)} "
                f"({type(exc).__name__}: {exc}). The file may be truncated or corrupt; "
                "re-export or re-copy it."
            ) from exc
        return out

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_array"] = None  # open file handles do not travel; reopen on the other side
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)


def _split_key(key, shape) -> tuple[tuple, tuple | None]:
    """Split an index into unit-step slices (what every stored reader supports) and the rest
    (integers, strides, index arrays), applied afterwards in NumPy to the bounding box."""
    if not isinstance(key, tuple):
        key = (key,)
    key = key + (slice(None),) * (len(shape) - len(key))
    if all(isinstance(k, slice) and k.step in (None, 1) for k in key):
        return key, None
    simple, rest = [], []
    for k, n in zip(key, shape):
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step > 0 and stop > start:
                simple.append(slice(start, stop))
                rest.append(slice(None, None, step))
            else:  # empty or reversed: read the whole axis, let NumPy index it
                simple.append(slice(0, n))
                rest.append(k)
        else:
            idx = np.asarray(k) % n if np.size(k) else np.asarray(k, dtype=int)
            lo = int(idx.min()) if idx.size else 0
            hi = int(idx.max()) + 1 if idx.size else 0
            simple.append(slice(lo, hi))
            rest.append(idx - lo if idx.ndim else int(idx) - lo)
    return tuple(simple), tuple(rest)


def _fmt_key(key) -> str:
    if not isinstance(key, tuple):
        key = (key,)
    parts = []
    for k in key:
        if isinstance(k, slice):
            parts.append(f"{k.start or 0}:{'' if k.stop is None else k.stop}")
        else:
            parts.append(str(k))
    return "[" + ", ".join(parts) + "]"


def chunk_edge(stored: int) -> int:
    """A dask chunk edge that is a multiple of the stored tile edge and close to CHUNK_TARGET."""
    stored = max(1, int(stored))
    if stored >= CHUNK_TARGET:
        return stored
    return stored * max(1, CHUNK_TARGET // stored)


def lazy_level(guarded: GuardedArray, chunks: tuple) -> da.Array:
    """A dask array over a guarded stored level, without touching any pixel."""
    return da.from_array(
        guarded,
        chunks=chunks,
        name=f"slide-{guarded.path.name}-{guarded._what.replace(' ', '')}-{next(_names)}",
        meta=np.empty((0,) * guarded.ndim, dtype=guarded.dtype),
        asarray=False,
        fancy=True,  # lets dask fuse a region's slice into the read; GuardedArray handles the rest
        lock=False,  # tifffile's store and zarr lock what needs locking
    )


# --- layout and dtype -------------------------------------------------------------------------


def to_channels_last(arr: da.Array, axes: str, *, path: Path, alpha: bool | None = None,
                     notes: list | None = None) -> da.Array:
    """Reduce an array with ``axes`` (tifffile letters: Y X S C Z T ...) to ``Y×X×C``.

    Single-sample time points / focal planes are squeezed; a real stack (several Z or T) is read
    at its first plane, and that is said: a warning naming the file, the axis and the plane
    (and a line appended to ``notes``, which backends keep in the slide's metadata). Any other
    non-trivial axis (an image stack, several series) is not a slide and raises :class:`SlideError`.

    ``alpha``: whether the file marks its last channel as alpha (TIFF ExtraSamples, a PNG's LA
    mode). Two channels without that mark are not grey + alpha but two stains or fluorescence
    channels, which a brightfield model cannot read: refused with :class:`SlideLayoutError`.
    """
    axes = axes.upper()
    if len(axes) != arr.ndim:
        raise SlideError(f"{path}: axes {axes!r} do not match the pixel array shape {arr.shape}.")
    if "Y" not in axes or "X" not in axes:
        raise SlideLayoutError(
            f"{path}: the image has axes {axes!r} (shape {arr.shape}), no Y and X plane: "
            "not a 2-D slide."
        )
    index = []
    kept = ""
    for ax, n in zip(axes, arr.shape):
        if ax in "YX" or (ax in "SC" and n > 1):
            index.append(slice(None))
            kept += ax
        elif n == 1:
            index.append(0)
        elif ax in "ZT":
            what = "focal planes (a Z-stack)" if ax == "Z" else "time points (a T-series)"
            note = f"{n} {what}; reading {ax}=0 only, the first"
            logger.warning("%s: %s", path, note)
            if notes is not None:
                notes.append(note)
            index.append(0)
        else:
            raise SlideLayoutError(
                f"{path}: the image is a stack of {n} planes along axis {ax!r} (shape "
                f"{arr.shape}, axes {axes!r}), not a 2-D slide; open one plane with another reader."
            )
    # No-op slicing / transposing is skipped: it would stop dask from fusing a region's slice into
    # the chunk read (then reading a 256² tile would decode the whole 1024² chunk around it).
    if any(not isinstance(i, slice) for i in index):
        arr = arr[tuple(index)]
    channel_axes = [a for a in kept if a in "SC"]
    if len(channel_axes) > 1:
        raise SlideLayoutError(
            f"{path}: the image has both channels and samples per pixel (shape {arr.shape}); "
            "only grey, RGB and RGBA slides are supported."
        )
    order = [kept.index("Y"), kept.index("X")] + [kept.index(a) for a in channel_axes]
    if order != list(range(arr.ndim)):
        arr = arr.transpose(order)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 2 and not alpha:
        raise SlideLayoutError(
            f"{path}: 2 channels that the file does not mark as grey + alpha (axes {axes!r}): two stains "
            "or fluorescence channels, not a brightfield slide. Export it as RGB (or one channel as grey) "
            "to segment it."
        )
    if arr.shape[2] > 4:
        raise SlideLayoutError(
            f"{path}: {arr.shape[2]} channels; only grey, grey+alpha, RGB and RGBA slides are "
            "supported (fluorescence with many channels needs another reader)."
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise SlideError(f"{path}: empty image (shape {arr.shape}).")
    # Colour conversion needs all channels of a pixel in one chunk (planar files store one per plane).
    if arr.chunks[2] != (arr.shape[2],):
        arr = arr.rechunk({2: -1}, method="tasks")
    return arr


def intensity_max(dtype, smallest: np.ndarray | None) -> float:
    """``hi`` of the linear map to 0..255 (see the module docstring); 255 for uint8."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return 255.0
    if dtype == np.bool_:
        return 1.0
    if smallest is not None and smallest.size:
        colour = smallest[..., :3] if smallest.ndim == 3 and smallest.shape[2] in (3, 4) else smallest
        hi = float(np.nanpercentile(colour.astype(np.float64), 99.9))
        if math.isfinite(hi) and hi > 0:
            return hi
    if dtype.kind in "ui":
        return float(np.iinfo(dtype).max)
    return 1.0


def _to_rgb_block(block: np.ndarray, hi: float | None) -> np.ndarray:
    """One Y×X×C chunk -> Y×X×3 uint8 (grey repeated; alpha over white glass, or dropped for a layer)."""
    c = block.shape[2]
    alpha = None
    if c in (2, 4) and hi is None:  # a napari layer's alpha: not part of the pixels napari segments
        block, c = block[..., : c - 1], c - 1
    elif c in (2, 4):
        # Alpha spans its dtype's full range whatever the colour range is.
        top = 255.0 if block.dtype == np.uint8 else _full_scale(block.dtype)
        alpha = np.clip(block[..., c - 1 :].astype(np.float32) / top, 0.0, 1.0)
        block, c = block[..., : c - 1], c - 1
    if block.dtype == np.uint8:
        vals = block
    elif hi is None:
        vals = _layer_range(block)
    else:
        vals = np.clip(block.astype(np.float32) * (255.0 / hi), 0, 255)
        vals = np.nan_to_num(vals, nan=255.0)
    if alpha is not None:
        vals = vals.astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    if c == 1:
        vals = np.repeat(vals, 3, axis=2)
    if vals.dtype != np.uint8:
        vals = np.rint(vals).astype(np.uint8)
    return np.ascontiguousarray(vals)


def _layer_range(block: np.ndarray) -> np.ndarray:
    """napari's fixed ranges for a layer's non-8-bit data, truncated to uint8: 16-bit over its full
    range (``v // 257``), floats over [0, 1], other integers clipped to 0..255."""
    if block.dtype == np.uint16:
        return (block // 257).astype(np.uint8)
    if np.issubdtype(block.dtype, np.floating):
        return (np.clip(block, 0, 1) * 255).astype(np.uint8)
    return np.clip(block, 0, 255).astype(np.uint8)


def _full_scale(dtype) -> float:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return 1.0
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def to_rgb_uint8(arr: da.Array, hi: float | None) -> da.Array:
    """``Y×X×C`` (C = 1..4, any dtype) -> lazy ``Y×X×3 uint8``; 8-bit values are kept as they are.

    ``hi`` says how values that are not 8-bit become 0..255, one of two conventions:

    - a number (a slide: :func:`rgb_pyramid`, ``hi`` from :func:`intensity_max`): ``v * 255 / hi``,
      rounded and clipped, the slide's own range (see the module docstring); alpha is laid over
      white, the colour of glass;
    - ``None`` (a napari layer's data, :class:`napari_dfa._widgets._layers.LayerPyramid`): napari's
      fixed range for the dtype, truncated: 16-bit ``v // 257``, floats [0, 1], other integers
      clipped to 0..255; alpha is dropped. A layer carries no slide to take a range from.
    """
    if arr.dtype == np.uint8 and arr.shape[2] == 3:
        return arr
    if arr.chunks[2] != (arr.shape[2],):  # each block needs all its channels (stacked channel layers)
        arr = arr.rechunk({2: -1}, method="tasks")
    return arr.map_blocks(
        _to_rgb_block,
        hi,
        dtype=np.uint8,
        chunks=(arr.chunks[0], arr.chunks[1], (3,)),
        meta=np.empty((0, 0, 0), dtype=np.uint8),
    )


# --- pyramids ---------------------------------------------------------------------------------


def _mean2x2(block: np.ndarray) -> np.ndarray:
    h, w = block.shape[0] // 2 * 2, block.shape[1] // 2 * 2
    b = block[:h, :w].astype(np.uint16)
    s = b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)  # rounded mean of the 2×2 block


def half(level: da.Array) -> da.Array:
    """The next pyramid level: rounded mean of 2×2 blocks (an odd last row/column is dropped)."""
    h, w = level.shape[0] // 2 * 2, level.shape[1] // 2 * 2
    level = level[:h, :w]
    # Every chunk must have even edges so 2×2 blocks never straddle chunks.
    even = tuple(tuple(_even_chunks(c)) for c in level.chunks[:2])
    if even != level.chunks[:2]:
        level = level.rechunk(even + (level.chunks[2],), method="tasks")
    out = level.map_blocks(
        _mean2x2,
        dtype=np.uint8,
        chunks=tuple(tuple(c // 2 for c in cs) for cs in level.chunks[:2]) + (level.chunks[2],),
        meta=np.empty((0, 0, 0), dtype=np.uint8),
    )
    # Halved chunks shrink geometrically: merge them back to ~CHUNK_TARGET so a low level does
    # not carry thousands of tiny tasks.
    if max(out.chunks[0]) < CHUNK_TARGET // 2 or max(out.chunks[1]) < CHUNK_TARGET // 2:
        out = out.rechunk((CHUNK_TARGET, CHUNK_TARGET, 3), method="tasks")
    return out


def _even_chunks(chunks: tuple[int, ...]):
    """Re-split a chunk tuple (whose total is even) into even-sized chunks of similar size."""
    if all(c % 2 == 0 for c in chunks):
        return chunks
    total = sum(chunks)
    size = max(2, max(chunks) // 2 * 2)
    out = [size] * (total // size)
    if total % size:
        out.append(total % size)
    return tuple(out)


def coarsen_pyramid(
    levels: list[da.Array], downsamples: list[float], *, min_size: int = PYRAMID_MIN_SIZE
) -> tuple[list[da.Array], list[float]]:
    """Append halved levels until the longer side is ≤ ``min_size`` (a flat image gets its pyramid,
    a stored pyramid that stops early gets the rest)."""
    levels, downsamples = list(levels), list(downsamples)
    while max(levels[-1].shape[:2]) > min_size and min(levels[-1].shape[:2]) >= 2:
        levels.append(half(levels[-1]))
        downsamples.append(downsamples[-1] * 2.0)
    return levels, downsamples


# --- assembling a backend's result ------------------------------------------------------------


@dataclass
class OpenedSlide:
    """What a backend hands to :class:`napari_dfa.slide.Slide`."""

    levels: list[da.Array]
    downsamples: list[float]
    mpp: float | None
    metadata: dict
    close: Callable[[], None] | None = None


def rgb_pyramid(stored: list[da.Array], *, path: Path) -> tuple[list[da.Array], list[float]]:
    """Stored ``Y×X×C`` levels (largest first) -> RGB uint8 levels and their downsamples.

    Levels that are not smaller than the one before are dropped. Below the smallest stored level,
    halved levels are added until the longer side is ≤ :data:`PYRAMID_MIN_SIZE` (so a flat image
    gets a whole pyramid).
    """
    stored = sorted(stored, key=lambda a: -a.shape[0] * a.shape[1])
    kept = [stored[0]]
    for arr in stored[1:]:
        if arr.shape[0] < kept[-1].shape[0] and arr.shape[1] < kept[-1].shape[1]:
            kept.append(arr)
    smallest = kept[-1]
    sample = None
    if smallest.dtype != np.uint8 and smallest.shape[0] * smallest.shape[1] <= PERCENTILE_MAX_PIXELS:
        sample = compute_local(smallest)
    hi = intensity_max(smallest.dtype, sample)
    levels = [to_rgb_uint8(arr, hi) for arr in kept]
    level0 = levels[0].shape
    downsamples = [level_downsample(level0, lv.shape) for lv in levels]
    return coarsen_pyramid(levels, downsamples)
