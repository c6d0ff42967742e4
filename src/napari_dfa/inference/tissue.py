"""A cheap tissue mask so that inference skips empty glass.

Glass in bright-field H&E is bright and grey; stained tissue is saturated (pink/purple) or dark.
A pixel is tissue when its chroma ``max(RGB) - min(RGB)`` reaches :data:`MIN_CHROMA` or its
brightness falls below :data:`MAX_BRIGHTNESS` (dark, unstained-looking tissue, debris). The mask is
computed on a low-resolution view (a coarse pyramid level, or a strided subsample), then a tile is
skipped when no tissue pixel lies in its footprint (one mask pixel of margin). Tiles that are
skipped get label 0 ("no prediction").

Tiles at the edge of the tissue hold glass too, and a model trained inside tissue ROIs calls it
some class ("other", typically), which would inflate that class's area. So the glass of the mask —
background patches of at least :data:`GLASS_MIN_AREA`, unlike lumens and fat — is also set to
label 0 pixel by pixel, at the mask's resolution (see :meth:`TissueMask.glass_box`).
"""

from __future__ import annotations

import logging
import math
import threading

import numpy as np

from .reader import compute_local

logger = logging.getLogger(__name__)

# The model's GroupNorms leave out the same white (model/tissue_norm.py keeps a copy: importing it
# here would import torch for a mask).
MIN_CHROMA = 18
MAX_BRIGHTNESS = 200
# The low-resolution view is at most about this many pixels on its longer side...
MASK_SIZE = 2048
# ...and at least this many working pixels per mask pixel: a view's mask at full resolution cost
# ~4x the time (glass components) for borders no one sees, and at the same factor a view and the
# whole level (up to 4096² here) share the mask's pixel grid. (Factor 4 would cost a quarter
# again but moves the glass edge and which white patches count as glass.)
MIN_MASK_FACTOR = 2
# Background patches at least this large (working-level pixels, 256²) are glass; smaller ones are
# holes in the tissue (lumens, fat) and keep the class the model gives them.
GLASS_MIN_AREA = 256 * 256


def tissue_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Boolean tissue mask (Y×X) of an RGB uint8 image (Y×X×3)."""
    rgb = np.asarray(rgb)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # Element-wise over the three planes: a reduction along a last axis of 3 is ~10x slower.
    hi = np.maximum(np.maximum(r, g), b)
    lo = np.minimum(np.minimum(r, g), b)
    return ((hi - lo) >= MIN_CHROMA) | (hi < MAX_BRIGHTNESS)  # hi >= lo: no uint8 wrap-around


class TissueMask:
    """Tissue mask over a region, queried in region pixels.

    Arguments:
      mask: boolean Y'×X' mask of the region at a lower resolution.
      scale: region pixels per mask pixel (along y and x).
    """

    def __init__(self, *, mask: np.ndarray, scale: tuple[float, float]):
        self.mask = np.asarray(mask, dtype=bool)
        self.scale = scale
        self.offset = (0.0, 0.0)  # region pixels of the mask origin before the region origin
        self._glass = None
        self._glass_any = False
        self._glass_lock = threading.Lock()

    @property
    def glass(self) -> np.ndarray:
        """Boolean glass mask (same grid as ``mask``): large background patches, not holes."""
        with self._glass_lock:  # found once, also when a background thread is still at it
            if self._glass is None:
                sy, sx = self.scale
                glass = glass_from_tissue(self.mask, min_area=GLASS_MIN_AREA / (sy * sx))
                self._glass_any = bool(glass.any())
                self._glass = glass
        return self._glass

    def find_glass_in_background(self) -> None:
        """Start finding :attr:`glass` in a thread (numpy and scipy free the GIL); the first
        :meth:`glass_box` waits for it."""
        if self._glass is None:
            threading.Thread(target=self._find_glass_quietly, name="napari-dfa-glass", daemon=True).start()

    def _find_glass_quietly(self) -> None:
        try:
            self.glass
        except Exception:  # noqa: BLE001 - the first glass_box tries again and raises it to the caller
            logger.debug("finding the glass in the background failed", exc_info=True)

    def glass_box(self, y: int, x: int, h: int, w: int) -> np.ndarray | None:
        """Glass pixels of a box (region pixels) as an h×w boolean array, or None if it has none."""
        glass = self.glass
        if not self._glass_any:
            return None
        sy, sx = self.scale
        oy, ox = self.offset
        my, mx = glass.shape
        rows = np.clip(((np.arange(y, y + h) + oy) // sy).astype(np.int64), 0, my - 1)
        cols = np.clip(((np.arange(x, x + w) + ox) // sx).astype(np.int64), 0, mx - 1)
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        if not glass[r0:r1, c0:c1].any():  # most cells hold no glass
            return None
        # rows first, then columns: two 1-D gathers, ~3x faster than one 2-D fancy index
        return glass[r0:r1, c0:c1][rows - r0][:, cols - c0]

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def any_in(self, y: int, x: int, h: int, w: int) -> bool:
        """Whether a box (region pixels) holds tissue, with one mask pixel of margin."""
        sy, sx = self.scale
        my, mx = self.mask.shape
        y0 = max(0, int(math.floor(y / sy)) - 1)
        x0 = max(0, int(math.floor(x / sx)) - 1)
        y1 = min(my, int(math.ceil((y + h) / sy)) + 1)
        x1 = min(mx, int(math.ceil((x + w) / sx)) + 1)
        if y1 <= y0 or x1 <= x0:
            return False
        # A scan of the tile's footprint: the tiles' footprints add up to about the mask's area, so
        # all tiles together cost ~one pass over a mask of at most MASK_SIZE², less than building
        # a summed-area table.
        return bool(self.mask[y0:y1, x0:x1].any())


def glass_from_tissue(tissue: np.ndarray, *, min_area: float, close: int = 2) -> np.ndarray:
    """Glass of a coarse tissue mask: after closing small gaps in the tissue, every background
    patch of at least ``min_area`` mask pixels; smaller ones (lumens, fat cells, tears, also where
    the region's edge cuts them) stay tissue. One mask pixel of margin is kept around the tissue."""
    if (~tissue).sum() < max(1.0, min_area):  # not enough background for one glass patch
        return np.zeros(tissue.shape, dtype=bool)
    from scipy import ndimage  # here: a view inside tissue never needs it (~0.2 s to import)

    pad = close + 1
    t = ndimage.binary_closing(np.pad(tissue, pad), iterations=close)[pad:-pad, pad:-pad]
    parts, n = ndimage.label(~t)
    if n == 0:
        return np.zeros_like(t)
    big = np.bincount(parts.ravel(), minlength=n + 1) >= max(1.0, min_area)
    big[0] = False
    return ndimage.binary_erosion(big[parts], border_value=1)


def tissue_mask_for(source, region: tuple[int, int, int, int], box: tuple[int, int, int, int] | None = None
                    ) -> TissueMask:
    """Tissue mask over ``box`` (default: ``region``), queried in ``region`` pixels (y0, x0, h, w,
    in the source's working-level pixels). The box is what the tiles read: the lattice tiles that
    touch a region reach beyond it, and whether they hold tissue is decided over all they read.

    ``source`` is an :class:`napari_dfa.inference.reader.LevelReader`: it offers the coarse pyramid
    levels of a slide when there are any, else the working level is subsampled with a stride.
    """
    y0, x0, h, w = box if box is not None else region
    low, factor = source.low_resolution(max(MIN_MASK_FACTOR, max(h, w) / MASK_SIZE))
    # The box in the low-resolution view's pixels (factor = working pixels per low pixel).
    ly0, lx0 = int(y0 // factor), int(x0 // factor)
    ly1 = max(ly0 + 1, int(math.ceil((y0 + h) / factor)))
    lx1 = max(lx0 + 1, int(math.ceil((x0 + w) / factor)))
    view = compute_local(low[ly0:ly1, lx0:lx1], threads=True)
    mask = tissue_from_rgb(view)
    logger.debug("tissue mask %s at 1/%.1f: %.1f%% tissue", mask.shape, factor, 100 * mask.mean())
    # Mask pixel k covers working pixels [(ly0 + k) * factor, ...); re-express in region pixels.
    tm = TissueMask(mask=mask, scale=(factor, factor))
    oy, ox = region[0] - ly0 * factor, region[1] - lx0 * factor
    if oy or ox:
        # Shift the grid: mask index 0 lies this many region pixels before the region's origin.
        tm = _ShiftedMask(tm, offset=(oy, ox))
    return tm


class _ShiftedMask(TissueMask):
    """A TissueMask whose mask origin sits ``offset`` working pixels before the region origin."""

    def __init__(self, base: TissueMask, *, offset: tuple[float, float]):
        super().__init__(mask=base.mask, scale=base.scale)
        self.offset = offset

    def any_in(self, y: int, x: int, h: int, w: int) -> bool:
        oy, ox = self.offset
        return super().any_in(int(y + oy), int(x + ox), h, w)
