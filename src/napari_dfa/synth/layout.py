"""Where the tissue classes lie: smooth noise, a Voronoi-like region map with class quotas, the ROI.

Everything is a function of global pixel coordinates and a seed, so that a slide rendered window by
window is seamless and a window's labels do not depend on which other windows were rendered.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.ndimage import distance_transform_edt
from scipy.spatial import cKDTree

_PERIOD = 256  # lattice cells before value noise repeats (256 cells x 100 px: no visible repeat)


@lru_cache(maxsize=64)
def _lattice(seed: tuple, channel: int) -> np.ndarray:
    table = np.random.default_rng([*seed, 0x51A7, channel]).uniform(-1, 1, (_PERIOD, _PERIOD)).astype(np.float32)
    table.flags.writeable = False  # shared between calls
    return table


class ValueNoise:
    """Deterministic smooth noise in about [-1, 1] at global pixel coordinates.

    Arguments:
      seed: integer seed of the slide or tile.
      channel: independent stream id (each use of noise takes its own channel).
    """

    def __init__(self, seed: int | tuple, channel: int):
        self.table = _lattice(tuple(np.atleast_1d(seed).tolist()), channel)

    def __call__(self, y0: float, x0: float, h: int, w: int, scale: float, step: float = 1.0) -> np.ndarray:
        """Noise over the ``h``×``w`` grid starting at (y0, x0) with spacing ``step`` pixels.

        ``scale`` is the feature size in pixels (the lattice spacing).
        """
        ys = (y0 + step * np.arange(h, dtype=np.float64)) / scale
        xs = (x0 + step * np.arange(w, dtype=np.float64)) / scale
        iy = np.floor(ys).astype(np.int64)
        ix = np.floor(xs).astype(np.int64)
        fy = (ys - iy).astype(np.float32)
        fx = (xs - ix).astype(np.float32)
        fy = (fy * fy * (3 - 2 * fy))[:, None]  # smoothstep: no lattice creases
        fx = fx * fx * (3 - 2 * fx)
        # Separable: interpolate along x on the few lattice rows the window touches, then pick and
        # blend rows. Element-wise only, so every window gets bit-identical values at a pixel.
        rows = np.arange(iy[0], iy[-1] + 2)
        sub = self.table[rows % _PERIOD]
        along_x = sub[:, ix % _PERIOD] * (1 - fx) + sub[:, (ix + 1) % _PERIOD] * fx
        r = iy - iy[0]
        return along_x[r] * (1 - fy) + along_x[r + 1] * fy

    def fbm(self, y0, x0, h, w, scale, octaves: int = 2, step: float = 1.0) -> np.ndarray:
        """Fractal sum of ``octaves`` layers (each half the scale, half the amplitude), std ≈ 0.35."""
        out = self(y0, x0, h, w, scale, step)
        amp, total = 1.0, 1.0
        for o in range(1, octaves):
            amp *= 0.5
            total += amp
            # Offsets decorrelate octaves that share one lattice table.
            out += amp * self(y0 + 977.0 * o, x0 + 593.0 * o, h, w, scale / 2**o, step)
        return out / total


def region_map(shape: tuple[int, int], *, region_size: float, rng: np.random.Generator,
               warp: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Irregular Voronoi-like regions on a grid: int32 region index per pixel, and their count.

    Arguments:
      shape: (h, w) of the (low-resolution) grid.
      region_size: typical region diameter in grid pixels.
      rng: random generator for the region seeds.
      warp: optional (dy, dx) displacement fields that bend the straight Voronoi edges.
    """
    h, w = shape
    n = max(2, int(round(h * w / region_size**2 * 1.3)))
    seeds = rng.uniform(0, 1, (n, 2)) * (h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if warp is not None:
        yy += warp[0]
        xx += warp[1]
    _, idx = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], axis=1), workers=1)
    return idx.reshape(h, w).astype(np.int32)


def assign_classes(regions: np.ndarray, valid: np.ndarray, proportions: np.ndarray,
                   rng: np.random.Generator) -> np.ndarray:
    """Give each region a class (1..K) so that class areas over ``valid`` pixels hit ``proportions``.

    Regions are taken largest first; each goes to a class whose remaining quota can hold it, chosen
    at random in proportion to that remaining quota, so layouts vary but areas land on target.
    Returns the per-region class id (uint8, index = region id).
    """
    n_regions = int(regions.max()) + 1
    sizes = np.bincount(regions[valid], minlength=n_regions).astype(np.float64)
    deficit = np.asarray(proportions, np.float64) * sizes.sum()
    out = np.zeros(n_regions, np.uint8)
    # Random tie-break before the stable size sort, so equal-size regions are not ordered by id.
    order = rng.permutation(n_regions)
    order = order[np.argsort(-sizes[order], kind="stable")]
    for r in order:
        s = sizes[r]
        fits = deficit >= 0.5 * s
        if s == 0 or not fits.any():
            c = int(np.argmax(deficit))
        else:
            weights = np.where(fits, np.maximum(deficit, 1e-9), 0.0)
            c = int(rng.choice(len(deficit), p=weights / weights.sum()))
        out[r] = c + 1
        deficit[c] -= s
    return out


def class_layout(shape: tuple[int, int], *, proportions: np.ndarray, region_size: float, seed,
                 valid: np.ndarray | None = None) -> np.ndarray:
    """Low-resolution class map (uint8 1..K) whose class shares over ``valid`` match ``proportions``."""
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 0x1A40])
    h, w = shape
    amp = 0.45 * region_size
    warp = (
        amp * ValueNoise(seed, 101).fbm(0, 0, h, w, region_size * 0.8),
        amp * ValueNoise(seed, 102).fbm(0, 0, h, w, region_size * 0.8),
    )
    regions = region_map(shape, region_size=region_size, rng=rng, warp=warp)
    if valid is None:
        valid = np.ones(shape, bool)
    lut = assign_classes(regions, valid, proportions, rng)
    return fit_quotas(lut[regions], valid, proportions)


def fit_quotas(labels: np.ndarray, valid: np.ndarray, proportions, iterations: int = 30) -> np.ndarray:
    """Move region borders so that class shares over ``valid`` match ``proportions`` closely.

    Whole regions only hit the quotas to within one region; here each class's signed distance to
    its area gets an offset, and a pixel takes the class with the largest offset distance, so that
    classes grow or shrink at their borders (shapes are kept) until the areas are on target.
    """
    proportions = np.asarray(proportions, np.float64)
    k = len(proportions)
    present = [c for c in range(1, k + 1) if (labels == c).any()]
    if len(present) < 2:
        return labels
    target = proportions[np.array(present) - 1] * valid.sum()
    signed = np.stack([
        (distance_transform_edt(labels == c) - distance_transform_edt(labels != c)).astype(np.float32)
        for c in present
    ])
    ids = np.array(present, np.uint8)
    beta = np.zeros(len(present), np.float32)
    best, best_err = labels, np.inf
    for _ in range(iterations):
        choice = np.argmax(signed + beta[:, None, None], axis=0)
        count = np.bincount(choice[valid], minlength=len(present)).astype(np.float64)
        err = np.abs(count - target).sum()
        if err < best_err:
            best, best_err = ids[choice], err
        if err <= 0.002 * valid.sum():
            break
        # Growing a class by one pixel of width adds about its perimeter in area.
        boundary = np.array([max(np.sqrt(max(cnt, 1.0)) * 4.0, 1.0) for cnt in count])
        beta += (0.8 * (target - count) / boundary).astype(np.float32)
    return best


def quantile_mask(field: np.ndarray, fraction: float) -> np.ndarray:
    """True on the ``fraction`` of pixels where ``field`` is largest (exact share, any field)."""
    if fraction <= 0:
        return np.zeros(field.shape, bool)
    if fraction >= 1:
        return np.ones(field.shape, bool)
    return field > np.quantile(field, 1.0 - fraction)


def ignore_region(shape: tuple[int, int], *, fraction: float, seed) -> np.ndarray:
    """An irregular region entering from one side of a tile, covering ``fraction`` of it (True = ignored)."""
    h, w = shape
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 0x1600])
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (np.cos(angle) * (yy / h - 0.5) + np.sin(angle) * (xx / w - 0.5)).astype(np.float32)
    field = ramp + 0.6 * ValueNoise(seed, 103).fbm(0, 0, h, w, max(h, w) / 3.0)
    return quantile_mask(field, fraction)


def tissue_region(shape: tuple[int, int], *, fraction: float, seed) -> np.ndarray:
    """An irregular tissue section (True) in the middle of a slide, covering ``fraction`` of it."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    radial = -np.sqrt(((yy + 0.5) / h - 0.5) ** 2 + ((xx + 0.5) / w - 0.5) ** 2)
    field = radial + 0.25 * ValueNoise(seed, 104).fbm(0, 0, h, w, max(h, w) / 4.0, octaves=3)
    return quantile_mask(field, fraction)


def upsample_labels(low: np.ndarray, factor: int, y0: int, x0: int, h: int, w: int, seed,
                    step: int = 1) -> np.ndarray:
    """Full-resolution labels of the window (y0, x0, h, w) from a low-resolution map, with organic edges.

    Nearest-neighbour sampling at coordinates displaced by smooth noise turns the low-resolution
    staircase into wavy borders; it depends on global coordinates only, so windows tile seamlessly.
    With ``step`` > 1 the window's pixels are every ``step``-th level-0 pixel (a pyramid level
    sampled by nearest neighbour), without computing the pixels in between.
    """
    amp = 0.8 * factor + 2.0
    scale = 3.0 * factor
    # A broad warp bends the borders; a fine one (about one low-res cell) frays the staircase.
    fine = 0.7 * factor
    dy = amp * ValueNoise(seed, 105).fbm(y0, x0, h, w, scale, step=step)
    dy += fine * ValueNoise(seed, 107)(y0, x0, h, w, 1.2 * factor, step=step)
    dx = amp * ValueNoise(seed, 106).fbm(y0, x0, h, w, scale, step=step)
    dx += fine * ValueNoise(seed, 108)(y0, x0, h, w, 1.2 * factor, step=step)
    ys = (y0 + step * np.arange(h, dtype=np.float32)[:, None] + dy) / factor
    xs = (x0 + step * np.arange(w, dtype=np.float32)[None, :] + dx) / factor
    iy = np.clip(np.floor(ys).astype(np.int64), 0, low.shape[0] - 1)
    ix = np.clip(np.floor(xs).astype(np.int64), 0, low.shape[1] - 1)
    return low[iy, ix]
