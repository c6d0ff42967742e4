"""Synthetic H&E tissue with known class frequency and class difficulty (no Qt, no torch).

The offline stand-in for BCSS: classes 1 inflammatory, 2 tumour, 3 stroma, 4 other, 5 necrosis
(``napari_dfa.classes.SYNTHETIC``), 0 = ignore / outside the ROI. Frequency and difficulty of each
class are set independently in :class:`SynthConfig`; the defaults hold a rare-and-easy class
(inflammatory), a common-and-easy one (tumour), a common-and-hard one (stroma, a look-alike of
"other"), and a rare-and-hard one (necrosis, a look-alike of tumour).

- :func:`generate_tile` — one image tile and its mask, deterministic by seed.
- :func:`write_dataset` — tiles in the SAM-Path layout (``img/``, ``mask/``, ``cv.csv``).
- :func:`write_slide` — a pyramidal tiled TIFF slide and its truth labels, rendered window by window.

What the two knobs mean, precisely:

- **frequency** f_c: each tile's class mix is drawn from Dirichlet(concentration · f); within a
  split the mixes are rescaled so that their mean is f; within a tile, class regions (warped
  Voronoi cells) are assigned greedily to the quotas and their borders then moved until the areas
  match. Measured over a dataset the shares land within about half a percentage point of f.
- **difficulty** d_c with look-alike class l: the class's appearance parameters (stain
  concentrations, fibres, nucleus cover, size, shape, chromatin, holes, patchiness) become
  (1 − d·m)·A_c + d·m·A_l with m = ``max_overlap`` (0.85), and its borders are blurred with a
  Gaussian-like sigma d · ``border_blur`` px: its background stain bleeds into the neighbours and its
  nuclei scatter across the border with the blurred weight as probability. The truth mask keeps
  the sharp border. A class without look-alike only gets the blur.
"""

from __future__ import annotations

import logging

import numpy as np

from ._synth_config import Appearance, ClassSpec, SynthConfig, default_classes
from ._synth_layout import class_layout, ignore_region, upsample_labels
from ._synth_render import margin_for, render, sample_stain

__all__ = [
    "Appearance",
    "ClassSpec",
    "SynthConfig",
    "default_classes",
    "generate_tile",
    "write_dataset",
    "write_slide",
    "label_frequencies",
    "DATASET_CSV",
    "DATASET_JSON",
]

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


def write_dataset(root, config: SynthConfig | None = None, n_train: int = 32, n_val: int = 8,
                  n_test: int = 8, *, tile: int = 256, seed: int = 0, progress=None, cancel=None):
    """Write tiles in the SAM-Path layout; see :func:`napari_dfa._synth_writers.write_dataset`."""
    from ._synth_writers import write_dataset as _write

    return _write(root, config or SynthConfig(), n_train, n_val, n_test, tile=tile, seed=seed,
                  progress=progress, cancel=cancel)


def write_slide(path, config: SynthConfig | None = None, size=(8192, 8192), seed: int = 0, *,
                mpp: float | None = None, tile: int = 256, compression: str = "jpeg", quality: int = 85,
                progress=None, cancel=None):
    """Write a pyramidal slide and its truth; see :func:`napari_dfa._synth_writers.write_slide`."""
    from ._synth_writers import write_slide as _write

    return _write(path, config or SynthConfig(), size=size, seed=seed, mpp=mpp, tile=tile,
                  compression=compression, quality=quality, progress=progress, cancel=cancel)
