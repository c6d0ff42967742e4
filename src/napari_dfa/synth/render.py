"""Render H&E pixels from a label window: class textures, blurred borders, Beer–Lambert stain mixing.

Stain model: optical density OD = c_H · v_H + c_E · v_E + OD_glass and RGB = 255 · exp(−OD), with
unit stain vectors v_H, v_E (Macenko's H&E reference) jittered per image. Each class contributes a
background stain (eosin, haematoxylin, collagen fibres, holes, patchiness) and nuclei (ellipses with
a haematoxylin profile). A class's soft weight is its one-hot map blurred by its border-blur sigma,
so hard classes bleed into their neighbours; a nucleus is kept with the probability of its class's
weight at its centre, so nuclei stay whole and scatter across a blurred border.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, uniform_filter
from scipy.special import gammaln, ndtri

from .config import Appearance
from .layout import ValueNoise

# Macenko et al. 2009 reference H&E optical-density vectors (R, G, B), as used in stain normalisation.
H_REF = np.array([0.5626, 0.7201, 0.4062])
E_REF = np.array([0.2159, 0.8012, 0.5581])
GLASS_OD = np.array([0.035, 0.04, 0.03])
_CELL = 64  # nuclei are drawn per 64-px cell of the global grid, seeded by the cell: seamless tiles
_FBM_STD = 0.30  # empirical std of ValueNoise.fbm with 2 octaves (sets the hole threshold)


@dataclass(frozen=True)
class Stain:
    """Per-image stain: unit OD vectors, concentration scales and glass background OD."""

    h_vec: np.ndarray
    e_vec: np.ndarray
    h_scale: float
    e_scale: float
    background: np.ndarray


def sample_stain(rng: np.random.Generator, jitter: float) -> Stain:
    """A stain with vectors and concentration scales jittered around the H&E reference."""

    def unit(v):
        v = np.clip(v, 0.02, None)
        return v / np.linalg.norm(v)

    return Stain(
        h_vec=unit(H_REF + jitter * rng.standard_normal(3)),
        e_vec=unit(E_REF + jitter * rng.standard_normal(3)),
        h_scale=float(np.exp(2 * jitter * rng.standard_normal())),
        e_scale=float(np.exp(2 * jitter * rng.standard_normal())),
        background=GLASS_OD * float(np.exp(2 * jitter * rng.standard_normal())),
    )


def soft_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-like blur in O(1) per pixel: two box filters with the same variance as sigma²."""
    if sigma < 0.5:
        return img
    size = max(3, int(round(np.sqrt(6 * sigma * sigma + 1))) | 1)
    return uniform_filter(uniform_filter(img, size, mode="nearest"), size, mode="nearest")


def margin_for(appearances: list[Appearance], sigmas: list[float]) -> int:
    """Context pixels a window needs around it so that its inner pixels do not depend on the cut."""
    reach = max(_nucleus_reach(a) for a in appearances)
    return int(np.ceil(max(2.5 * max(sigmas), reach))) + 2


def _nucleus_reach(a: Appearance) -> int:
    return int(np.ceil(a.radius * np.sqrt(max(a.elongation, 1.0)) * (1 + 2 * a.radius_sd))) + 1


def render(labels: np.ndarray, *, y0: int, x0: int, margin: int, appearances: list[Appearance],
           sigmas: list[float], stain: Stain, seed, fibre_period: float) -> np.ndarray:
    """RGB uint8 of the inner window of ``labels``.

    Arguments:
      labels: uint8 label window covering global pixels (y0 − margin, x0 − margin) onward, with
        ``margin`` context pixels on every side; 0 = glass, 1..K = classes.
      y0, x0: global position of the inner window's top-left pixel.
      margin: context width (see ``margin_for``).
      appearances: per label id 0..K, after the difficulty interpolation.
      sigmas: border-blur sigma per label id 0..K.
      stain: this image's stain.
      seed: seed of the image or slide (with global coordinates, it fixes every random draw).
      fibre_period: pixels between collagen fibres.
    Returns:
      (h, w, 3) uint8, h = labels.shape[0] − 2·margin.
    """
    hh, ww = labels.shape
    oy, ox = y0 - margin, x0 - margin
    seed = tuple(np.atleast_1d(seed).tolist())

    # Soft class weights: each class's one-hot map blurred by its own border sigma, normalised.
    present = [int(c) for c in np.unique(labels)]
    weights = np.ones((len(present), hh, ww), np.float32)
    if len(present) > 1:
        for i, c in enumerate(present):
            weights[i] = soft_blur((labels == c).astype(np.float32), sigmas[c])
        weights /= np.maximum(weights.sum(axis=0), 1e-6)

    # Per-pixel background parameters: one matrix product over the present classes. The hole
    # threshold is the noise level exceeded on a `lumen` share of the area (capped: no holes).
    names = ("eosin", "haem", "fibre", "mottle", "grain")
    table = [[getattr(appearances[c], n) for c in present] for n in names]
    lumen = np.array([appearances[c].lumen for c in present])
    with np.errstate(divide="ignore"):
        table.append(np.minimum(_FBM_STD * ndtri(1 - np.clip(lumen, 0, 0.99)), 5.0).tolist())
    table = np.array(table, np.float32)
    # einsum, not BLAS: a threaded matmul costs more in thread start-up than it saves here.
    mixed = np.einsum("pk,kn->pn", table, weights.reshape(len(present), -1)).reshape(len(table), hh, ww)
    eosin, haem, fibre_amp, mottle, grain, hole_thr = mixed

    # Collagen: two families of wavy stripes in different directions, blended by a smooth field.
    if fibre_amp.max() > 0.01:
        fib = _fibres(seed, oy, ox, hh, ww, fibre_period)
        eosin *= 1 + fibre_amp * (2.0 * fib - 0.5)

    # Patchiness of staining (strong in necrosis) and white holes (fat, vessels, tears).
    patch = 1 + 2 * mottle * ValueNoise(seed, 205).fbm(oy, ox, hh, ww, 40.0, octaves=1)
    eosin *= patch
    haem *= patch
    hole = np.zeros((hh, ww), np.float32)
    if lumen.max() > 0.005:
        hole = np.clip((ValueNoise(seed, 204).fbm(oy, ox, hh, ww, 20.0) - hole_thr) / 0.06, 0, 1)
        eosin *= 1 - hole
        haem *= 1 - hole

    nuclei = _nuclei(labels.shape, present, weights, hole, appearances, seed, oy, ox, fibre_period)
    eosin *= 1 - 0.7 * np.clip(nuclei, 0, 1)  # nuclei displace the cytoplasm
    haem += nuclei

    # Beer–Lambert: concentrations -> optical density -> transmitted light.
    m = margin
    c_h = (haem[m:hh - m, m:ww - m] * stain.h_scale)[..., None]
    c_e = (np.maximum(eosin[m:hh - m, m:ww - m], 0) * stain.e_scale)[..., None]
    od = c_h * stain.h_vec.astype(np.float32) + c_e * stain.e_vec.astype(np.float32)
    od += stain.background.astype(np.float32)
    grain = grain[m:hh - m, m:ww - m]
    od *= (1 + grain * pixel_noise(seed, y0, x0, *grain.shape))[..., None]
    return np.clip(255.0 * np.exp(-od) + 0.5, 0, 255).astype(np.uint8)


def _fibre_geometry(seed) -> tuple[float, float]:
    rng = np.random.default_rng([*seed, 0xF1B])
    theta1 = rng.uniform(0, np.pi)
    return theta1, theta1 + rng.uniform(0.35 * np.pi, 0.65 * np.pi)


def _fibres(seed, oy, ox, hh, ww, period) -> np.ndarray:
    """Sharp wavy stripes in [0, 1] (collagen bundles), mean ≈ 0.31."""
    t1, t2 = _fibre_geometry(seed)
    bend = 2.5 * period * ValueNoise(seed, 202).fbm(oy, ox, hh, ww, 48.0)
    y = np.arange(oy, oy + hh, dtype=np.float64)[:, None]
    x = np.arange(ox, ox + ww, dtype=np.float64)[None, :]

    def stripes(theta, sign):
        # The straight part of the phase is exact in float64 (global coordinates are large); only
        # the wrapped phase goes to float32.
        straight = np.mod((x * np.cos(theta) + y * np.sin(theta)) / period, 1.0).astype(np.float32)
        return 0.5 + 0.5 * np.sin(np.float32(2 * np.pi) * (straight + sign * bend / np.float32(period)))

    s1, s2 = stripes(t1, 1), stripes(t2, -1)
    blend = _fibre_blend(seed, oy, ox, hh, ww)
    # Bundles fade in and out instead of running as an endless regular grating.
    fade = np.clip(0.65 + 1.6 * ValueNoise(seed, 206).fbm(oy, ox, hh, ww, 24.0), 0, 1)
    return fade * (blend * s1 + (1 - blend) * s2) ** 3


def _fibre_blend(seed, oy, ox, hh, ww, step: float = 1.0) -> np.ndarray:
    return np.clip(0.5 + 2.0 * ValueNoise(seed, 203).fbm(oy, ox, hh, ww, 160.0, step=step), 0, 1)


def _nuclei(shape, present, weights, hole, appearances, seed, oy, ox, period) -> np.ndarray:
    """Haematoxylin of all nuclei in the window: ellipses summed into one canvas."""
    hh, ww = shape
    canvas = np.zeros(hh * ww, np.float32)
    t1, t2 = _fibre_geometry(seed)
    cy0, cx0 = oy // _CELL, ox // _CELL
    cy1, cx1 = (oy + hh - 1) // _CELL, (ox + ww - 1) // _CELL
    for i, c in enumerate(present):
        a = appearances[c]
        if a.nuclei <= 0 or a.nucleus_haem <= 0 or weights[i].max() < 0.02:
            continue
        lam = a.nuclei * _CELL * _CELL / (np.pi * a.radius**2)
        d = _cell_draws(seed, c, lam, cy0, cy1, cx0, cx1)
        py, px = d[:, 0] - oy, d[:, 1] - ox
        inside = (py >= 0) & (py < hh) & (px >= 0) & (px < ww)
        d, py, px = d[inside], py[inside], px[inside]
        iy, ix = py.astype(np.int64), px.astype(np.int64)
        # Keep a nucleus with its class's soft weight at the centre; none in holes.
        keep = (d[:, 2] < weights[i][iy, ix]) & (hole[iy, ix] < 0.5)
        d, py, px, iy, ix = d[keep], py[keep], px[keep], iy[keep], ix[keep]
        if len(d) == 0:
            continue
        z = ndtri(np.clip(d[:, 3], 1e-6, 1 - 1e-6))  # a normal variate from the uniform draw
        radius = a.radius * np.exp(np.clip(a.radius_sd * z, -2 * a.radius_sd, 2 * a.radius_sd))
        if a.elongation >= 1.8:
            # Spindle nuclei lie along the local collagen fibres.
            blend = _fibre_blend(seed, oy, ox, hh, ww)[iy, ix]
            angle = np.where(blend > 0.5, t1, t2) + np.pi / 2 + 0.25 * (d[:, 4] - 0.5)
        else:
            angle = np.pi * d[:, 4]
        strength = a.nucleus_haem * (0.85 + 0.3 * d[:, 5])
        _stamp(canvas, hh, ww, py, px, radius, a.elongation, angle, strength, a.vesicular, _nucleus_reach(a))
    canvas = canvas.reshape(hh, ww)
    return gaussian_filter(np.minimum(canvas, 2.6), 0.6, truncate=2.5)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays: a fast, well-mixed counter-based hash."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def pixel_noise(seed, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Zero-mean unit-variance white noise that is a function of the global pixel position only."""
    key = np.uint64(np.random.SeedSequence([*seed, 0x6A]).generate_state(1, np.uint64)[0])
    ys = (np.arange(y0, y0 + h, dtype=np.int64) + 2**20).astype(np.uint64) << np.uint64(32)
    xs = (np.arange(x0, x0 + w, dtype=np.int64) + 2**20).astype(np.uint64)
    bits = _splitmix((ys[:, None] | xs[None, :]) ^ key)
    # Two 32-bit uniforms per hash; their difference is triangular (variance 1/6), rescaled to 1.
    lo = (bits & np.uint64(0xFFFFFFFF)).astype(np.float32)
    hi = (bits >> np.uint64(32)).astype(np.float32)
    return (lo - hi) * np.float32(np.sqrt(6.0) / 2**32)


def _cell_draws(seed, c: int, lam: float, cy0: int, cy1: int, cx0: int, cx1: int) -> np.ndarray:
    """Nuclei of class ``c`` in the global cells [cy0..cy1]×[cx0..cx1]: rows (y, x, u2..u5).

    Each cell's nuclei are a pure function of (seed, class, cell) through a counter-based hash, so
    neighbouring windows draw the same nuclei in shared cells, at no per-cell generator cost.
    Columns: global y, global x, then four uniforms (keep, radius, angle, strength).
    """
    key = np.uint64(np.random.SeedSequence([*seed, 0x4E, c]).generate_state(1, np.uint64)[0])
    cy, cx = np.meshgrid(np.arange(cy0, cy1 + 1), np.arange(cx0, cx1 + 1), indexing="ij")
    cell = ((cy.ravel() + 2**20).astype(np.uint64) << np.uint64(32)) | (cx.ravel() + 2**20).astype(np.uint64)
    base = _splitmix(cell ^ key)
    # Poisson count per cell by inverse CDF on a table.
    n_max = int(np.ceil(lam + 6 * np.sqrt(lam) + 6))
    ks = np.arange(n_max + 1)
    pmf = np.exp(ks * np.log(max(lam, 1e-12)) - lam - gammaln(ks + 1))
    count = np.minimum(np.searchsorted(np.cumsum(pmf), _unit(_splitmix(base ^ np.uint64(0xC0)))), n_max)
    j = np.arange(n_max, dtype=np.uint64)
    ids = _splitmix(base[:, None] ^ (j[None, :] * np.uint64(0xD1B54A32D192ED03)))
    take = j[None, :].astype(np.int64) < count[:, None]
    ids = ids[take]
    cell_y = np.repeat(cy.ravel(), count)
    cell_x = np.repeat(cx.ravel(), count)
    u = [_unit(_splitmix(ids + np.uint64(f))) for f in range(6)]
    return np.stack([(cell_y + u[0]) * _CELL, (cell_x + u[1]) * _CELL, u[2], u[3], u[4], u[5]], axis=1)


def _stamp(canvas, hh, ww, py, px, radius, elongation, angle, strength, vesicular, reach) -> None:
    """Add anti-aliased ellipses with a (vesicular) haematoxylin profile into the flat canvas."""
    off = np.arange(-reach, reach + 1)
    dy, dx = np.meshgrid(off, off, indexing="ij")
    dy, dx = dy.ravel(), dx.ravel()
    yy = np.floor(py).astype(np.int64)[:, None] + dy[None, :]
    xx = np.floor(px).astype(np.int64)[:, None] + dx[None, :]
    ry = (yy - py[:, None]).astype(np.float32)
    rx = (xx - px[:, None]).astype(np.float32)
    cos, sin = np.cos(angle)[:, None].astype(np.float32), np.sin(angle)[:, None].astype(np.float32)
    semi_a = (radius * np.sqrt(elongation))[:, None].astype(np.float32)
    semi_b = (radius / np.sqrt(elongation))[:, None].astype(np.float32)
    u = (rx * cos + ry * sin) / semi_a
    v = (ry * cos - rx * sin) / semi_b
    q = u * u + v * v
    # Signed distance to the rim in pixels (along the minor axis) gives a one-pixel soft edge.
    cover = np.clip(0.5 + (1 - np.sqrt(q)) * semi_b, 0, 1)
    profile = 1 - vesicular * np.clip(1 - 1.3 * q, 0, 1)
    val = cover * profile * strength[:, None].astype(np.float32)
    ok = (yy >= 0) & (yy < hh) & (xx >= 0) & (xx < ww) & (val > 0)
    canvas += np.bincount((yy * ww + xx)[ok], weights=val[ok], minlength=hh * ww).astype(np.float32)
