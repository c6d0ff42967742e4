"""Stain vectors of H&E tissue, and matching a slide's stain to a model's training stain.

Another lab's slides differ from a model's training slides first in their stain: how much
haematoxylin and eosin, and in which hue. The demo model, trained on one stain, scored mean mDice
0.56 on 13 synthetic slides whose stain strayed 2–6× as far as its training slides' (0.97 in the
training stain); matched to its training stain first, 0.80, and none worse (BENCHMARKS.md,
"Matching the stain").

Macenko's method (Macenko et al. 2009, as TIAToolbox's and torchstain's normalisers do it): in
optical density (OD = −log(I/I₀)) a tissue pixel is a non-negative mix of two stain vectors; they
are the extreme directions of the tissue pixels' OD in the plane of its two main axes. A
:class:`StainFit` keeps them and the 99th percentile of each stain's concentration. A
:class:`StainMatch` takes a pixel's concentrations under the slide's fit, scales them to the
reference's percentiles and mixes them with the reference's vectors: one 3×3 matrix in OD, so a
pixel's new colour depends on that pixel alone — tiles and views of a slide get the same colours
(labels stay independent of the tiling) when the fit is the slide's, not the view's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError

OD_TISSUE = 0.15  # optical density below which a pixel is glass (Macenko's β)
PERCENTILE = 99  # of a stain's concentrations: its "maximum", robust to a few dark specks
MIN_PIXELS = 500  # tissue pixels below which a fit says nothing
_OD_LUT = -np.log((np.arange(256, dtype=np.float32) + 1.0) / 256.0)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 float32 optical density of uint8 RGB (0 for white)."""
    return _OD_LUT[np.asarray(rgb)]


def stain_vectors(rgb: np.ndarray) -> np.ndarray:
    """Two unit stain vectors (2×3, optical density), hematoxylin-like (larger red OD) first, by
    Macenko's method on the pixels that are stained in every channel."""
    od = optical_density(rgb).reshape(-1, 3)
    od = od[(od > OD_TISSUE).all(axis=1)].astype(np.float64)
    if len(od) < 50:
        return np.full((2, 3), np.nan)
    if len(od) > 20000:  # plenty for a covariance; keeps it fast on big tiles
        od = od[np.random.default_rng(0).choice(len(od), 20000, replace=False)]
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, [2, 1]]  # the two main axes
    plane *= np.sign(plane.sum(axis=0, keepdims=True) + 1e-12)  # point into positive OD
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [1, 99])
    v = np.stack([plane @ [np.cos(lo), np.sin(lo)], plane @ [np.cos(hi), np.sin(hi)]])
    v *= np.sign(v.sum(axis=1, keepdims=True) + 1e-12)
    v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-12
    return v if v[0, 0] >= v[1, 0] else v[::-1].copy()


@dataclass(frozen=True)
class StainFit:
    """A stain: two unit OD vectors (haematoxylin-like first) and each stain's concentration at
    the :data:`PERCENTILE` over the tissue it was fitted on."""

    vectors: tuple[tuple[float, float, float], tuple[float, float, float]]
    max_concentration: tuple[float, float]

    @classmethod
    def fit(cls, images) -> StainFit:
        """The stain of RGB uint8 images (tiles of one slide, or of a training set) taken together."""
        pixels = np.concatenate([np.asarray(im).reshape(-1, 3) for im in images])[None]
        v = stain_vectors(pixels)
        od = optical_density(pixels).reshape(-1, 3)
        od = od[(od > OD_TISSUE).any(axis=1)]
        if len(od) < MIN_PIXELS or not np.isfinite(v).all():
            raise DataError(f"cannot fit a stain: {len(od)} stained pixels (at least {MIN_PIXELS} are needed)")
        conc = np.linalg.lstsq(v.T, od.T.astype(np.float64), rcond=None)[0]
        top = np.percentile(conc, PERCENTILE, axis=1)
        if not (top > 0).all():
            raise DataError("cannot fit a stain: a stain has no positive concentration in these pixels")
        return cls(vectors=tuple(tuple(round(float(x), 6) for x in row) for row in v),  # type: ignore[arg-type]
                   max_concentration=tuple(round(float(x), 6) for x in top))  # type: ignore[arg-type]

    def as_dict(self) -> dict:
        return {"vectors": [list(r) for r in self.vectors], "max_concentration": list(self.max_concentration)}

    @classmethod
    def from_dict(cls, d: dict) -> StainFit:
        try:
            v = np.asarray(d["vectors"], dtype=np.float64)
            m = np.asarray(d["max_concentration"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"a stain needs 'vectors' (2×3) and 'max_concentration' (2): {exc}") from None
        if v.shape != (2, 3) or m.shape != (2,) or not np.isfinite(v).all() or not (m > 0).all():
            raise DataError(f"a stain needs 2×3 finite vectors and 2 positive concentrations, got {v.shape}, {m}")
        return cls(vectors=tuple(tuple(float(x) for x in r) for r in v),  # type: ignore[arg-type]
                   max_concentration=tuple(float(x) for x in m))  # type: ignore[arg-type]


class StainMatch:
    """Recolours RGB uint8 pixels from the ``source`` stain to the ``target`` stain (see the
    module). Callable on any H×W×3 array; ``key`` identifies it in caches and store settings."""

    def __init__(self, source: StainFit, target: StainFit):
        self.source, self.target = source, target
        v = np.asarray(source.vectors, np.float64)
        scale = np.asarray(target.max_concentration) / np.asarray(source.max_concentration)
        # OD row vector → concentrations (least squares) → scaled → target OD: one 3×3 matrix.
        self.matrix = torch.from_numpy(
            (np.linalg.pinv(v.T).T @ np.diag(scale) @ np.asarray(target.vectors, np.float64)).astype(np.float32))
        self.key = ("stain", source.vectors, source.max_concentration, target.vectors, target.max_concentration)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        rgb = np.asarray(rgb)
        # torch, not numpy, for the product: numpy's OpenBLAS starts threads that keep spinning
        # after the call, on the cores where segment's one-thread passes run (the 2048² level of
        # the sample slide on 2 cores: +51 % with numpy, +16 % with torch, whose threads segment sets).
        od = torch.from_numpy(optical_density(rgb).reshape(-1, 3)) @ self.matrix
        out = od.neg_().exp_().mul_(256.0).sub_(1.0).clamp_(0, 255).to(torch.uint8)
        return out.numpy().reshape(rgb.shape)

    def describe(self) -> dict:
        """JSON for store settings and provenance."""
        return {"source": self.source.as_dict(), "target": self.target.as_dict()}

    def __repr__(self) -> str:
        return f"StainMatch(source={self.source.as_dict()}, target={self.target.as_dict()})"


def training_stain(segmenter) -> StainFit:
    """The stain of a model's training tiles (``metadata["domain"]["stain_reference"]``, written
    with its domain statistics by :func:`napari_dfa.model.domain.domain_stats`)."""
    domain = (getattr(segmenter, "metadata", None) or {}).get("domain") or {}
    ref = domain.get("stain_reference")
    if ref is None:
        name = (segmenter.metadata or {}).get("source") or "this model"
        raise DataError(f"{name} records no stain of its training data, so a slide's stain cannot be matched "
                        "to it: write its domain statistics again (napari_dfa.model.domain.domain_stats and "
                        "write_domain_metadata on its training images), or segment without matching the stain")
    return StainFit.from_dict(ref)
