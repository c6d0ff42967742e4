"""The OpenSlide backend (optional extra ``napari-dfa[openslide]``): MIRAX, Hamamatsu, Leica, Ventana...

Each OpenSlide level becomes a dask array whose chunks are ``read_region`` calls (OpenSlide is
thread-safe), RGBA composited over white — OpenSlide marks pixels outside the scanned area
transparent. OpenSlide is imported only here, lazily, so the package works without it.

Bounds (MIRAX, Leica SCN, ...: the ``openslide.bounds-x/-y/-width/-height`` properties, the scanned
rectangle inside a larger, mostly empty frame): the slide is cropped to them, as QuPath does by
default. Pixel (0, 0) of level 0 is OpenSlide's level-0 pixel (bounds-x, bounds-y), and every
coordinate napari-dfa reads or writes (labels, GeoJSON, corrections, regions) is in the frame
QuPath shows, so GeoJSON goes both ways without a shift. Level k is ``bounds / downsample_k``
pixels, read from the same offset. ``Slide.metadata["bounds"]`` keeps the rectangle ``{"x", "y",
"width", "height"}`` in OpenSlide level-0 pixels: add (x, y) to a napari-dfa coordinate to get
OpenSlide's full-frame one (what ``openslide.OpenSlide.read_region`` takes).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ._arrays import GuardedArray, OpenedSlide, chunk_edge, lazy_level, rgb_pyramid, to_channels_last
from ..errors import SlideError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'napari-dfa[openslide]'"


def _import_openslide(path: Path):
    try:
        import openslide
    except (ImportError, OSError) as exc:  # OSError: the Python binding without its C library
        raise SlideError(
            f"{path}: this slide format needs OpenSlide, which is not available ({exc}). "
            f"Install it with: {INSTALL_HINT}"
        ) from exc
    return openslide


class _OpenSlideLevel:
    """``level[y0:y1, x0:x1, :]`` -> RGBA pixels through ``read_region``; picklable (reopens)."""

    def __init__(self, path: Path, level: int, downsample: float, handle=None, origin=(0, 0)):
        self.path, self.level, self.downsample = path, level, downsample
        self.origin = (int(origin[0]), int(origin[1]))  # (x, y) level-0 pixels: the bounds' corner
        self._handle = handle

    def __call__(self):
        return self

    def __getitem__(self, key):
        if self._handle is None:
            self._handle = _import_openslide(self.path).OpenSlide(str(self.path))
        ys, xs = key[0], key[1]
        y0, x0 = ys.start or 0, xs.start or 0
        h, w = ys.stop - y0, xs.stop - x0
        # read_region takes the top-left in level-0 pixels and the size in level pixels
        location = (int(round(x0 * self.downsample)) + self.origin[0],
                    int(round(y0 * self.downsample)) + self.origin[1])
        rgba = np.asarray(self._handle.read_region(location, self.level, (w, h)))
        return rgba[:, :, key[2]] if len(key) > 2 else rgba

    def __getstate__(self):
        return {**self.__dict__, "_handle": None}


def open_openslide(path: Path) -> OpenedSlide:
    """Open any slide OpenSlide reads; SlideError (with the install hint) if OpenSlide is missing."""
    openslide = _import_openslide(path)
    try:
        handle = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise SlideError(f"{path}: OpenSlide does not recognise this file as a slide ({exc}).") from exc
    except (openslide.OpenSlideError, OSError) as exc:
        raise SlideError(f"{path}: OpenSlide cannot open the slide ({type(exc).__name__}: {exc}).") from exc
    try:
        props = dict(handle.properties)
        bounds = _bounds(props, handle.level_dimensions[0])
        origin = (bounds["x"], bounds["y"]) if bounds else (0, 0)
        stored = []
        for level, ((w, h), ds) in enumerate(zip(handle.level_dimensions, handle.level_downsamples)):
            if bounds:  # QuPath's frame: the bounds rectangle at this level's scale
                w = max(1, int(bounds["width"] / ds))
                h = max(1, int(bounds["height"] / ds))
            tile_h = int(props.get(f"openslide.level[{level}].tile-height", 0) or 0)
            tile_w = int(props.get(f"openslide.level[{level}].tile-width", 0) or 0)
            chunks = (min(chunk_edge(tile_h or 1024), h), min(chunk_edge(tile_w or 1024), w), 4)
            guarded = GuardedArray(path=path, shape=(h, w, 4), dtype=np.uint8,
                                   open_level=_OpenSlideLevel(path, level, float(ds), handle, origin),
                                   what=f"level {level}")
            stored.append(to_channels_last(lazy_level(guarded, chunks), "YXS", path=path))
        levels, downsamples = rgb_pyramid(stored, path=path)
        # OpenSlide's own downsamples for its stored levels (rounded dimensions make ours differ).
        downsamples[: len(handle.level_downsamples)] = [float(d) for d in handle.level_downsamples]
    except SlideError:
        handle.close()
        raise
    except Exception as exc:
        handle.close()
        raise SlideError(f"{path}: OpenSlide cannot read the slide ({type(exc).__name__}: {exc}).") from exc
    mpp = None
    try:
        mpp_x = float(props.get(openslide.PROPERTY_NAME_MPP_X, "nan"))
        mpp = mpp_x if mpp_x > 0 else None
    except ValueError:
        pass
    vendor = props.get(openslide.PROPERTY_NAME_VENDOR) or "openslide"
    meta = {"vendor": vendor, "format": "openslide", "properties": props,
            "associated_images": sorted(handle.associated_images),
            "stored_levels": handle.level_count}
    if bounds:
        meta["bounds"] = bounds
    power = props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
    if power:
        try:
            meta["objective_power"] = float(power)
        except ValueError:
            pass
    if vendor == "aperio":
        meta["aperio"] = {k.split(".", 1)[1]: v for k, v in props.items() if k.startswith("aperio.")}
    return OpenedSlide(levels=levels, downsamples=downsamples, mpp=mpp, metadata=meta, close=handle.close)


def _bounds(props: dict, full: tuple[int, int]) -> dict | None:
    """The ``openslide.bounds-*`` rectangle (level-0 pixels) when all four are given and it is
    not the whole frame, else None."""
    try:
        x, y, w, h = (int(props[f"openslide.bounds-{k}"]) for k in ("x", "y", "width", "height"))
    except (KeyError, ValueError):
        return None
    if w <= 0 or h <= 0 or (x, y, w, h) == (0, 0, int(full[0]), int(full[1])):
        return None
    return {"x": x, "y": y, "width": w, "height": h}
