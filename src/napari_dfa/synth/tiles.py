"""One synthetic tile and its mask, and the class mixes of a split (see the package docstring)."""

from __future__ import annotations

import logging

import numpy as np

from .config import SynthConfig
from .layout import class_layout, ignore_region, upsample_labels
from .render import margin_for, render, sample_stain

logger = logging.getLogger(__name__)

DATASET_CSV = "cv.csv"  # SAM-Path's name for the fold file (its configs point `dataset_csv_path` at cv.csv)
DATASET_JSON = "synth.json"
_TILE_FACTOR = 4  # the layout of a dataset tile is drawn at 1/4 resolution, then upsampled


def _seed_tuple(seed) -> tuple[int, ...]:
    return tuple(int(s) for s in np.atleast_1d(seed).tolist())


def tile_proportions(config: SynthConfig, rng: np.random.Generator, n: int = 1) -> np.ndarray:
    """Per-tile class mixes (n × K) drawn around the configured frequencies (Dirichlet)."""
    f = np.asarray(config.frequencies, np.float64)
    alpha = np.maximum(config.concentration * f, 1e-3)
    p = rng.dirichlet(alpha, size=n)
    p[:, f == 0] = 0
    return p / p.sum(axis=1, keepdims=True)


def balance_proportions(p: np.ndarray, frequencies, iterations: int = 50) -> np.ndarray:
    """Rescale per-tile mixes so that their mean is exactly ``frequencies`` (iterative fitting).

    Each tile keeps its character (which classes dominate it); the dataset as a whole then has the
    configured class frequencies instead of a random draw around them.
    """
    f = np.asarray(frequencies, np.float64)
    p = np.array(p, np.float64)
    for _ in range(iterations):
        col = p.mean(axis=0)
        p *= np.where(col > 0, f / np.maximum(col, 1e-12), 0)
        p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-12)
    return p


def generate_tile(config: SynthConfig | None = None, seed=0, *, size: int = 256,
                  proportions=None) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic H&E tile and its mask.

    Arguments:
      config: generator settings (defaults: ``SynthConfig()``).
      seed: int or tuple of ints; the same seed gives the same pixels.
      size: tile side in pixels.
      proportions: K class shares of the annotated pixels; None draws them around the frequencies.
    Returns:
      (rgb uint8 size×size×3, mask uint8 size×size with 0 = ignore and 1..K = classes).
    """
    config = config or SynthConfig()
    seed = _seed_tuple(seed)
    rng = np.random.default_rng([*seed, 0x7113])
    if proportions is None:
        proportions = tile_proportions(config, rng)[0]
    proportions = np.asarray(proportions, np.float64)

    # Layout at low resolution: ROI first, then class regions with quotas inside the ROI.
    low_shape = (size // _TILE_FACTOR + 2, size // _TILE_FACTOR + 2)
    ignored = ignore_region(low_shape, fraction=config.ignore_fraction, seed=seed)
    # At least ~12 regions per tile, so that a tile can hold several classes near their quotas.
    region_size = min(config.region_size, size / np.sqrt(12)) / _TILE_FACTOR
    low = class_layout(low_shape, proportions=proportions, region_size=region_size, seed=seed, valid=~ignored)
    combined = low | (ignored.astype(np.uint8) << 7)  # one map, so labels and ROI share one warp

    appearances = config.effective_appearances()
    sigmas = config.blur_sigmas()
    m = margin_for(appearances, sigmas)
    window = upsample_labels(combined, _TILE_FACTOR, -m, -m, size + 2 * m, size + 2 * m, seed)
    hidden = window & 127  # the ignored region is still tissue, it is only unannotated
    stain = sample_stain(rng, config.stain_jitter)
    rgb = render(hidden, y0=0, x0=0, margin=m, appearances=appearances, sigmas=sigmas, stain=stain,
                 seed=seed, fibre_period=config.fibre_period)
    inner = window[m:m + size, m:m + size]
    mask = np.where(inner & 128, 0, inner & 127).astype(np.uint8)
    return rgb, mask


def label_frequencies(counts: np.ndarray) -> np.ndarray:
    """Class shares (K) of the non-ignored pixels from a bincount over label ids 0..K."""
    counts = np.asarray(counts, np.float64)[1:]
    return counts / max(counts.sum(), 1.0)
