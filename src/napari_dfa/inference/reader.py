"""What :func:`napari_dfa.inference.segment` reads from: a Slide level or an in-memory/dask image.

Every read returns exactly the requested box as ``h×w×3 uint8``; a failure becomes a
:class:`SlideError` naming the file (or "the image" for arrays).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ..arrays import compute_local  # noqa: F401  (inference reads through it)
from ..errors import ConfigError, DataError, DFAError, SlideError

logger = logging.getLogger(__name__)


def _is_slide(obj) -> bool:
    return hasattr(obj, "levels") and hasattr(obj, "downsamples")


class LevelReader:
    """A readable working level.

    Arguments:
      data: the Slide, numpy array or dask array.
      level: pyramid level (0 for arrays).
      transform: applied to every box :meth:`read` returns (pixelwise, e.g. a
        :class:`~napari_dfa.model.stain.StainMatch`); the tissue mask's coarse view
        (:meth:`low_resolution`) stays as stored.
    """

    def __init__(self, *, data, level: int = 0, transform=None):
        self.transform = transform
        self.slide = data if _is_slide(data) else None
        if self.slide is not None:
            self.name = str(getattr(self.slide, "path", "slide"))
            n = len(self.slide.levels)
            if not isinstance(level, (int, np.integer)) or not 0 <= int(level) < n:
                raise ConfigError(f"{self.name}: level {level!r} does not exist (the slide has levels 0..{n - 1})")
            self.level = int(level)
            self.array = self.slide.levels[self.level]
            self.downsample = float(self.slide.downsamples[self.level])
            self.mpp = self.slide.level_mpp(self.level) if hasattr(self.slide, "level_mpp") else None
        else:
            self.name = "the image"
            if level not in (0, "auto"):
                raise ConfigError(f"level={level!r}: an array has only level 0")
            self.level = 0
            self.array = data
            self.downsample = 1.0
            self.mpp = None
        shape = tuple(getattr(self.array, "shape", ()))
        if len(shape) != 3 or shape[2] != 3 or np.dtype(self.array.dtype) != np.uint8:
            raise DataError(f"{self.name}: expected a Y×X×3 uint8 RGB image, got shape {shape} "
                            f"dtype {getattr(self.array, 'dtype', '?')}")
        self.shape = (int(shape[0]), int(shape[1]))

    def check_region(self, region) -> tuple[int, int, int, int]:
        """Validate a (y0, x0, h, w) region in this level's pixels (None: the whole level)."""
        H, W = self.shape
        if region is None:
            return (0, 0, H, W)
        try:
            y0, x0, h, w = (int(v) for v in region)
        except (TypeError, ValueError):
            raise ConfigError(f"{self.name}: region must be (y0, x0, height, width), got {region!r}") from None
        if h <= 0 or w <= 0 or y0 < 0 or x0 < 0 or y0 + h > H or x0 + w > W:
            raise ConfigError(f"{self.name}: region {(y0, x0, h, w)} lies outside level {self.level} "
                              f"({H}×{W} pixels); give y0,x0,height,width inside it")
        return (y0, x0, h, w)

    def read(self, y: int, x: int, h: int, w: int, *, threads: bool = False) -> np.ndarray:
        """Pixels of the box (working-level coordinates), as a contiguous h×w×3 uint8 array;
        ``threads``: the stored tiles under it are decoded in dask's local thread pool."""
        try:
            # Boxes always lie inside the level, so the level's dask array is sliced directly (the
            # slide's read_region would pad outside it); a slide's read failure is its SlideError.
            out = np.ascontiguousarray(compute_local(self.array[y : y + h, x : x + w], threads=threads),
                                       dtype=np.uint8)
        except DFAError:
            raise
        except Exception as exc:  # noqa: BLE001 - any backend failure becomes one clear error
            raise SlideError(f"{self.name}: cannot read level {self.level} box {(y, x, h, w)} ({exc})") from exc
        if out.shape != (h, w, 3):
            raise SlideError(f"{self.name}: read of {(y, x, h, w)} returned shape {out.shape}")
        return out if self.transform is None else self.transform(out)

    def read_padded(self, y: int, x: int, h: int, w: int, th: int, tw: int) -> np.ndarray:
        """Read h×w pixels and pad them (mirrored) to a th×tw forward-pass tile."""
        tile = self.read(y, x, h, w)
        if (h, w) != (th, tw):
            tile = np.pad(tile, ((0, th - h), (0, tw - w), (0, 0)), mode="symmetric")
        return tile

    def low_resolution(self, factor: float):
        """A coarse view of the working level about ``factor`` times smaller, and its exact factor
        (working pixels per view pixel). Uses a stored coarser level when the slide has one (a
        level still too fine is subsampled further with a stride)."""
        factor = max(1.0, factor)
        array, base = self.array, 1.0
        if self.slide is not None:
            rels = {k: float(self.slide.downsamples[k]) / self.downsample
                    for k in range(self.level, len(self.slide.levels))}
            # The stored level nearest the factor (in ratio; a tie goes to the coarser one), then
            # strided: never the working level subsampled when a level at the factor exists (a
            # fine level is read whole for the mask, every JPEG tile of it decoded).
            k = min(rels, key=lambda k: (abs(math.log(rels[k] / factor)), -rels[k]))
            array, base = self.slide.levels[k], rels[k]
        step = max(1, int(math.floor(factor / base)))
        if step == 1:
            return array, base
        return _Strided(array, step), base * step


class _Strided:
    """``array[::step, ::step]`` sliced lazily (so only the wanted box is read)."""

    def __init__(self, array, step: int):
        self.array, self.step = array, step

    def __getitem__(self, key):
        ys, xs = key
        s = self.step
        return compute_local(self.array[ys.start * s : ys.stop * s : s, xs.start * s : xs.stop * s : s],
                             threads=True)
