"""Augmentation of (RGB uint8 H×W×3, mask uint8 H×W) pairs, deterministic per (seed, epoch, index).

Every random choice comes from a :class:`numpy.random.Generator` built from
``(seed, epoch, index)`` (:func:`rng_for`), never from global state: the same sample in the same
epoch is augmented identically in every run, in any worker process and after a resume.

Stain jitter works in HED space (colour deconvolution with Ruifrok & Johnston's stain matrix): the
hematoxylin, eosin and DAB optical densities are each scaled and shifted, then mixed back to RGB,
so the jitter looks like a different stain batch, not a colour-balance change.
"""

from __future__ import annotations

import numpy as np

from .config import AugmentConfig

# Ruifrok & Johnston stain vectors (rows: H, E, DAB optical density per R, G, B).
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float32
)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)


def rng_for(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one sample in one epoch (independent streams via SeedSequence)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]))


def _pad_to(rgb: np.ndarray, mask: np.ndarray, size: int):
    """Pad an image smaller than ``size`` on a side to it: white pixels, ignore label."""
    h, w = mask.shape
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), constant_values=255)
        mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=0)
    return rgb, mask


def random_crop(rgb: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator):
    """A ``size×size`` window at a random position; smaller images are padded (white, ignore)."""
    rgb, mask = _pad_to(rgb, mask, size)
    h, w = mask.shape
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return rgb[y : y + size, x : x + size], mask[y : y + size, x : x + size]


def center_crop(rgb: np.ndarray, mask: np.ndarray, size: int):
    """The central ``size×size`` window (padded like :func:`random_crop` when smaller)."""
    rgb, mask = _pad_to(rgb, mask, size)
    h, w = mask.shape
    y, x = (h - size) // 2, (w - size) // 2
    return rgb[y : y + size, x : x + size], mask[y : y + size, x : x + size]


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Scale each HED optical density by ``1 ± strength`` and shift it by ``± strength/4``."""
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    hed = od.reshape(-1, 3) @ HED_FROM_RGB
    alpha = rng.uniform(1 - strength, 1 + strength, size=3).astype(np.float32)
    beta = rng.uniform(-strength / 4, strength / 4, size=3).astype(np.float32)
    hed = hed * alpha + beta
    od = np.clip(hed @ RGB_FROM_HED, 0, None)
    out = 256.0 * np.exp(-od) - 1.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(rgb.shape)


def augment(
    rgb: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    *,
    config: AugmentConfig,
    crop: int | None = None,
):
    """Crop (if ``crop``), flip, rotate and stain-jitter one pair; returns contiguous uint8 arrays.

    The geometric operations move image and mask together; colour operations touch the image only.
    """
    if crop:
        rgb, mask = random_crop(rgb, mask, crop, rng)
    if config.flip:
        if rng.random() < 0.5:
            rgb, mask = rgb[:, ::-1], mask[:, ::-1]
        if rng.random() < 0.5:
            rgb, mask = rgb[::-1], mask[::-1]
    if config.rot90:
        k = int(rng.integers(0, 4))
        if k:
            rgb, mask = np.rot90(rgb, k, axes=(0, 1)), np.rot90(mask, k, axes=(0, 1))
    if config.stain > 0:
        rgb = stain_jitter(np.ascontiguousarray(rgb), rng, config.stain)
    if config.brightness > 0:
        factor = rng.uniform(1 - config.brightness, 1 + config.brightness)
        rgb = np.clip(rgb.astype(np.float32) * factor, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb), np.ascontiguousarray(mask)
