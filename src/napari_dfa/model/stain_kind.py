"""Is a slide H&E at all? IHC (DAB), haematoxylin alone, greyscale and fluorescence told apart
from H&E by the colour of its pixels (no Qt, no torch, no slide reading).

napari-dfa's models are trained on bright-field H&E. A slide in another stain gets confident
nonsense (an IHC slide, matched to the demo model's stain, came out 38 % "inflammatory", glass
included), and recolouring it to the model's stain cannot help: matching maps one H&E to another.
So the Segment widget and ``napari-dfa predict`` say what the slide looks like instead, and do not
offer stain matching for it.

The decision, in this order, on the pixels of a few tissue tiles (or a low-resolution view):

1. **Dark background** (fluorescence, dark-field): more than :data:`DARK_SHARE` of all pixels are
   darker than :data:`DARK` (mean of R, G, B). In bright-field the light comes through the glass
   and the tissue: glass is near white and stained tissue rarely darker than 50/255 (an optical
   density above 1.6 in every channel: ink, pigment, folds). When most pixels are that dark, the
   light comes from the sample.
2. **No colour** (a greyscale scan, or an unstained section): of the stained pixels (optical
   density above :data:`~napari_dfa.model.stain.OD_TISSUE` in some channel), fewer than
   :data:`COLOURED_SHARE` have a chroma (max − min of R, G, B) of :data:`CHROMA` or more (the
   tissue mask's own chroma threshold). Stains are colours: in H&E and IHC most stained pixels
   pass (0.76–1.0 measured); in a grey image none does (JPEG noise stays below ~6).
3. **No eosin**: colour deconvolution (:func:`skimage.color.rgb2hed`, Ruifrok & Johnston's
   haematoxylin, eosin and DAB vectors) of the coloured stained pixels; eosin's share of the total
   stain (negative amounts counted as none) is below :data:`EOSIN_SHARE`. Eosin stains cytoplasm,
   stroma and muscle, most of any H&E section: it carried 15–25 % of the deconvolved stain on the
   two real H&E scans and the synthetic slides measured (its projection on Ruifrok's vector, not a
   calibrated amount; 0.05 on the palest 128-px tile, at the tissue's edge); where there is none
   rgb2hed finds ~0 (0.000 on haematoxylin-DAB IHC, 0.002 on haematoxylin alone). A fifth of the
   palest slide's share keeps a pale eosin H&E.
   With no eosin, **brown** decides between IHC and haematoxylin alone: the share of coloured
   stained pixels that absorb more blue than green (optical density B > G). DAB does (Ruifrok's
   DAB vector 0.27, 0.57, 0.78 in R, G, B); haematoxylin (0.65, 0.70, 0.29) and eosin (0.07, 0.99,
   0.11) both absorb green more than blue. At :data:`BROWN_SHARE` or more it is an IHC (DAB)
   stain; below, haematoxylin without eosin (an IHC with few positive cells, or another stain).

Brown alone never makes an H&E slide "not H&E": melanin and haemosiderin are brown in H&E too
(up to 14 % of a tile of the skin scan measured), which is why eosin is asked first.
Not recognised: other chromogens (a red AEC or Fast Red passes for eosin) and special stains
(PAS, trichrome) — they read as H&E or as "no eosin", as their colours say.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .stain import OD_TISSUE, optical_density

DARK = 50  # mean of R, G, B (0..255) below which a pixel is "dark"
DARK_SHARE = 0.5  # more than this share of dark pixels: the background is dark (fluorescence)
CHROMA = 18  # max − min of R, G, B from which a pixel has a colour (as inference/tissue.py's mask)
COLOURED_SHARE = 0.25  # fewer stained pixels with colour than this: a greyscale image
EOSIN_SHARE = 0.03  # eosin's share of the deconvolved stain below which there is no eosin
BROWN_SHARE = 0.10  # with no eosin, this share of brown (B > G in OD) pixels or more: DAB
MIN_PIXELS = 500  # stained pixels below which nothing is said
MAX_PIXELS = 250_000  # pixels measured at most (an even subsample): the shares are stable by then

WORDS = {
    "he": "H&E",
    "ihc": "an IHC (DAB) stain",
    "haematoxylin": "haematoxylin without eosin (an IHC counterstain or another stain)",
    "grey": "a greyscale image (no stain colours)",
    "fluorescence": "a fluorescence (dark-background) image",
    "unknown": "too little stained tissue to tell",
}


@dataclass(frozen=True)
class StainKind:
    """What :func:`stain_kind` found.

    Arguments:
      kind: ``"he"``, ``"ihc"``, ``"haematoxylin"``, ``"grey"``, ``"fluorescence"`` or
        ``"unknown"`` (too few stained pixels: nothing is said, matching stays offered).
      measures: the shares the decision read (``dark``, ``coloured``, ``eosin``, ``brown``).
    """

    kind: str
    measures: dict = field(default_factory=dict)

    @property
    def he(self) -> bool:
        """Whether the slide can be treated as H&E (also when too little tissue says otherwise)."""
        return self.kind in ("he", "unknown")

    @property
    def words(self) -> str:
        return WORDS[self.kind]

    def message(self, trained_on: str | None = None) -> str:
        """"this looks like an IHC (DAB) stain, not H&E: ..." for the user; "" for H&E."""
        if self.he:
            return ""
        looks = "this is" if self.kind in ("grey",) else "this looks like"
        trained = f" ({trained_on})" if trained_on else ""
        return (f"{looks} {self.words}, not H&E: the model was trained on H&E{trained}, so its labels here "
                "mean little, and matching the stain cannot make this slide H&E")


def _pixels(images: Sequence[np.ndarray]) -> np.ndarray:
    """All pixels of ``images`` (RGB uint8), an even subsample of at most :data:`MAX_PIXELS`."""
    px = np.concatenate([np.asarray(im)[..., :3].reshape(-1, 3) for im in images if np.asarray(im).size])
    if len(px) > MAX_PIXELS:
        px = px[:: int(np.ceil(len(px) / MAX_PIXELS))]
    return px


# Ruifrok & Johnston's stain vectors (rows: haematoxylin, eosin, DAB), as scikit-image's rgb2hed;
# written out here so that the core needs no scikit-image (a headless install has none).
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


def rgb2hed(rgb: np.ndarray) -> np.ndarray:
    """Colour deconvolution of RGB uint8 pixels (..., 3) into haematoxylin, eosin and DAB, equal to
    :func:`skimage.color.rgb2hed` (negative amounts cut to 0, as there)."""
    arr = np.maximum(np.asarray(rgb, dtype=np.float64) / 255.0, 1e-6)
    return np.maximum((np.log(arr) / np.log(1e-6)) @ HED_FROM_RGB, 0)


def stain_kind(images: Sequence[np.ndarray]) -> StainKind:
    """What stain ``images`` (RGB uint8 tiles of one slide, or a low-resolution view of it) show;
    see the module for the rules and why each threshold is where it is."""
    images = [images] if isinstance(images, np.ndarray) else list(images)
    if not images:
        return StainKind("unknown")
    px = _pixels(images)
    dark = float((px.astype(np.float32).mean(axis=1) < DARK).mean())
    if dark > DARK_SHARE:
        return StainKind("fluorescence", {"dark": round(dark, 4)})
    od = optical_density(px)
    stained = (od > OD_TISSUE).any(axis=1)
    if stained.sum() < MIN_PIXELS:
        return StainKind("unknown", {"dark": round(dark, 4), "stained": int(stained.sum())})
    chroma = px.max(axis=1).astype(np.int16) - px.min(axis=1)
    coloured_px = stained & (chroma >= CHROMA)
    coloured = float(coloured_px.sum() / stained.sum())
    measures = {"dark": round(dark, 4), "coloured": round(coloured, 4)}
    if coloured < COLOURED_SHARE or coloured_px.sum() < MIN_PIXELS:
        return StainKind("grey", measures)
    hed = np.clip(rgb2hed(px[coloured_px]), 0, None)
    total = hed.sum(axis=0)
    eosin = float(total[1] / max(total.sum(), 1e-12))
    brown = float((od[coloured_px, 2] > od[coloured_px, 1]).mean())
    measures.update(eosin=round(eosin, 4), brown=round(brown, 4))
    if eosin >= EOSIN_SHARE:
        return StainKind("he", measures)
    return StainKind("ihc" if brown >= BROWN_SHARE else "haematoxylin", measures)
