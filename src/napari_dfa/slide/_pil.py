"""The Pillow backend: PNG and JPEG.

These formats have no tiles, so the image is decoded whole, once per compute, as a single dask
chunk; opening reads only the header (size and mode). Larger images get halved levels like a flat
TIFF. Decoding errors (a truncated PNG) surface as :class:`SlideError` when the chunk is computed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ._arrays import GuardedArray, OpenedSlide, lazy_level, rgb_pyramid, to_channels_last
from ._tiff import MPP_PLAUSIBLE
from ..errors import SlideError

# Pillow mode -> (dtype, samples, mode to convert to first or None)
_MODES = {
    "1": (np.bool_, 1, None),
    "L": (np.uint8, 1, None),
    "LA": (np.uint8, 2, None),
    "RGB": (np.uint8, 3, None),
    "RGBA": (np.uint8, 4, None),
    "I;16": (np.uint16, 1, None),
    "I;16B": (np.uint16, 1, None),
    "I;16L": (np.uint16, 1, None),
    "I": (np.int32, 1, None),
    "F": (np.float32, 1, None),
}


class _PilImage:
    """Decodes the whole image on the first read; picklable (it holds only the path)."""

    def __init__(self, path: Path, convert: str | None):
        self.path, self.convert = path, convert

    def __call__(self):
        # Slides are large on purpose: lift Pillow's decompression-bomb guard for this read only.
        with Image.open(self.path) as im:
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im.load()
            finally:
                Image.MAX_IMAGE_PIXELS = saved
            if self.convert:
                im = im.convert(self.convert)
            arr = np.asarray(im)
        return arr if arr.ndim == 3 else arr[:, :, None]


def open_pil(path: Path) -> OpenedSlide:
    """Open a PNG or JPEG from its header; the pixels are decoded when a level is computed."""
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as im:
            mode, (width, height), fmt = im.mode, im.size, im.format
            info = dict(im.info)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SlideError(f"{path}: not a readable PNG/JPEG ({type(exc).__name__}: {exc}).") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    if mode in _MODES:
        dtype, samples, convert = _MODES[mode]
    else:  # palette, CMYK, YCbCr...: let Pillow turn them into RGB(A)
        convert = "RGBA" if mode in ("P", "PA") and "transparency" in info or mode == "PA" else "RGB"
        dtype, samples = np.uint8, len(convert)
    guarded = GuardedArray(path=path, shape=(height, width, samples), dtype=dtype,
                           open_level=_PilImage(path, convert), what="the image")
    # Pillow's 2- and 4-sample modes (LA, La, RGBA, ...) always end with alpha.
    level = to_channels_last(lazy_level(guarded, (height, width, samples)), "YXS", path=path, alpha=True)
    levels, downsamples = rgb_pyramid([level], path=path)
    # A dpi tag gives µm/px only when plausible for a microscope (72/96 dpi screenshots are not).
    mpp = None
    dpi = info.get("dpi")
    if dpi and float(dpi[0]) > 0:
        lo, hi = MPP_PLAUSIBLE
        candidate = 25400.0 / float(dpi[0])
        mpp = candidate if lo <= candidate <= hi else None
    meta = {"vendor": fmt.lower() if fmt else "image", "format": fmt, "mode": mode}
    return OpenedSlide(levels=levels, downsamples=downsamples, mpp=mpp, metadata=meta)
