"""Class colours for figures drawn over H&E: none that passes for unlabelled tissue or glass.

A class painted pink over pink tissue reads as "not labelled" (the demo model's stroma colour,
255/170/200, is eosin). :func:`overlay_palette` keeps a model's colours where they stand out from
H&E and swaps the others for unused colours that do; ``"cb"`` gives the Okabe–Ito colour-blind-safe
set (distinct under protanopia, deuteranopia and tritanopia), less its reddish purple, which is
eosin again. Colours are compared in CIE L*a*b* (ΔE 1976): :func:`looks_like_he` is the test.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

PALETTES = ("auto", "model", "cb")
# What unlabelled H&E looks like: eosin (light and deep), haematoxylin (nuclei), their mix, glass.
HE_REFERENCES = {
    "eosin": (232, 160, 196), "light eosin": (245, 200, 222), "deep eosin": (200, 90, 150),
    "haematoxylin": (80, 60, 150), "dark nuclei": (45, 30, 90), "purple mix": (160, 110, 180),
    "glass": (246, 244, 246),
}
HE_DISTANCE = 35.0  # ΔE below which a colour passes for one of the references
# Okabe & Ito (2008), colour-blind safe; reddish purple (204, 121, 167) left out: it is eosin. In the
# order whose first five stay furthest apart over tissue for normal, protan, deutan and tritan vision.
OKABE_ITO = [(0, 114, 178), (213, 94, 0), (240, 228, 66), (86, 180, 233), (0, 0, 0), (0, 158, 115),
             (230, 159, 0)]
# Replacements for H&E look-alikes in the "auto" palette: saturated, away from pink and purple.
RESERVE = [(0, 170, 70), (255, 140, 0), (0, 200, 200), (240, 220, 0), (0, 90, 255), (140, 90, 20),
           (120, 200, 0)]
# Machado, Oliveira & Fernandes (2009), full severity, on linear RGB.
_CVD = {
    "protan": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
    "deutan": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]],
    "tritan": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]],
}


def to_lab(rgb) -> np.ndarray:
    """sRGB (0..255, ...×3) to CIE L*a*b* (D65)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 216 / 24389, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def simulate_cvd(rgb, kind: str) -> np.ndarray:
    """``rgb`` (0..255) as seen with protanopia, deuteranopia or tritanopia (``kind``)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    out = np.clip(lin @ np.asarray(_CVD[kind]).T, 0, 1)
    return 255 * np.where(out > 0.0031308, 1.055 * out ** (1 / 2.4) - 0.055, 12.92 * out)


def delta_e(a, b) -> float:
    return float(np.linalg.norm(to_lab(a) - to_lab(b)))


def looks_like_he(rgb, threshold: float = HE_DISTANCE) -> str | None:
    """The H&E reference ``rgb`` passes for (``"eosin"``, ``"glass"``, ...), or None."""
    name, dist = min(((n, delta_e(rgb, ref)) for n, ref in HE_REFERENCES.items()), key=lambda t: t[1])
    return name if dist < threshold else None


def overlay_palette(class_colors, palette: str = "auto") -> list[tuple[int, int, int]]:
    """One colour per class for an overlay on H&E.

    ``"model"``: the model's colours as they are; ``"auto"``: those, with every H&E look-alike
    replaced by an unused colour that is none; ``"cb"``: Okabe–Ito, colour-blind safe (cycled past 7
    classes, with a warning)."""
    colors = [tuple(int(v) for v in c[:3]) for c in class_colors]
    if palette == "model":
        return colors
    if palette == "cb":
        if len(colors) > len(OKABE_ITO):
            logger.warning("%d classes but %d colour-blind-safe colours: colours repeat", len(colors),
                           len(OKABE_ITO))
        return [OKABE_ITO[i % len(OKABE_ITO)] for i in range(len(colors))]
    if palette != "auto":
        raise ValueError(f"palette must be one of {PALETTES}, not {palette!r}")
    out = list(colors)
    for i, c in enumerate(colors):
        like = looks_like_he(c)
        if like is None:
            continue
        # The spare that differs most from the other classes as they look over tissue (blended
        # half and half with eosin), never one that passes for H&E itself.
        others = [o for j, o in enumerate(out) if j != i]
        spares = [r for r in RESERVE if looks_like_he(r) is None and r not in out]
        if not spares:
            continue
        spare = max(spares, key=lambda r: min((delta_e(on_tissue(r), on_tissue(o)) for o in others),
                                              default=0.0))
        logger.info("overlay: class %d colour %s looks like %s; drawn as %s instead", i + 1, c, like, spare)
        out[i] = spare
    return out


def on_tissue(rgb, alpha: float = 0.5) -> np.ndarray:
    """What a class colour looks like painted at ``alpha`` over eosin-stained tissue."""
    return alpha * np.asarray(rgb, np.float64) + (1 - alpha) * np.asarray(HE_REFERENCES["eosin"], np.float64)
