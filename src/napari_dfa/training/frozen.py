"""Fine-tuning with a frozen encoder: the encoder's features of each image are computed once.

QuPath's pixel classifiers and convpaint answer a pathologist's strokes within seconds because the
expensive part — the image features — is computed once per image and only a light classifier is
trained on top. The same split holds for a DFA model: the encoder (most of the compute of a forward
and backward pass) stays fixed, its features of every training image and of every region to compare
are kept in a :class:`FeatureCache`, and each optimizer step runs only the pixel decoder, the class
tokens, the decoder and δ on crops of those features (:func:`crop_features`).

Features are computed on the whole image (tiled with overlap when it is large), so a crop's features
carry the context around the crop, as they would in whole-slide inference.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from ..model.tissue_norm import GLASS_CELL

logger = logging.getLogger(__name__)

STRIDES = (4, 8, 16, 32)
ENCODE_TILE = 1024  # largest side encoded in one pass (bounds activation memory)
ENCODE_OVERLAP = 64  # context on each side of a tile, discarded when stitching
PREDICT_TILE = 1024  # about what whole-slide inference decodes at once (inference.segment fits tiles near 1024)
PREDICT_OVERLAP = 64


def _to_input(rgb: np.ndarray, device, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """B×3×H'×W' float in [0, 1], reflect-padded to ``multiple`` (as Segmenter.predict_logits pads)."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None].float().div_(255.0)
    h, w = rgb.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


class Features(list):
    """The encoder features of an image (strides 4, 8, 16, 32) and its ``glass`` cells (1×1×H/32×W/32
    bool, or None), which the decoder's GroupNorms leave out of their statistics as in a forward pass;
    ``image``: the (padded) 1×3×H×W input in [0, 1], which a model's pixel head reads too."""

    def __init__(self, features, glass: torch.Tensor | None = None, image: torch.Tensor | None = None):
        super().__init__(features)
        self.glass = glass
        self.image = image


@torch.no_grad()
def encode(model, rgb: np.ndarray, *, multiple: int = 32) -> Features:
    """The encoder features (1×C×H/s×W/s for s in 4, 8, 16, 32) of an H×W×3 uint8 image, padded to
    ``multiple``. Large images are encoded in overlapping tiles and stitched (the overlap discarded),
    so memory stays bounded. ``no_grad``, not ``inference_mode``: the features feed a graph that
    trains the layers after them."""
    device = next(model.parameters()).device
    model.eval()
    x, _ = _to_input(rgb, device, multiple)
    H, W = x.shape[-2:]
    glass = model.find_glass(x)
    if max(H, W) <= ENCODE_TILE + 2 * ENCODE_OVERLAP:
        return Features([f.detach() for f in model.encode(x, glass=glass)], glass, x)
    out: list[torch.Tensor] | None = None
    step = ENCODE_TILE
    for y0 in range(0, H, step):
        for x0 in range(0, W, step):
            # Tile with its context, clipped to the image; every offset a multiple of 32.
            ty0, tx0 = max(0, y0 - ENCODE_OVERLAP), max(0, x0 - ENCODE_OVERLAP)
            ty1, tx1 = min(H, y0 + step + ENCODE_OVERLAP), min(W, x0 + step + ENCODE_OVERLAP)
            # The image's glass cells, cut to the tile: the same cells the tile alone would give.
            feats = model.encode(x[..., ty0:ty1, tx0:tx1], glass=_glass_of_box(glass, ty0, tx0, ty1 - ty0, tx1 - tx0))
            if out is None:
                out = [torch.zeros((1, f.shape[1], H // s, W // s), dtype=f.dtype, device=f.device)
                       for f, s in zip(feats, STRIDES)]
            for full, f, s in zip(out, feats, STRIDES):
                iy0, ix0 = (y0 - ty0) // s, (x0 - tx0) // s
                h, w = (min(H, y0 + step) - y0) // s, (min(W, x0 + step) - x0) // s
                full[..., y0 // s:y0 // s + h, x0 // s:x0 // s + w] = f[..., iy0:iy0 + h, ix0:ix0 + w]
    return Features(out, glass, x)  # type: ignore[arg-type]


def crop_features(features: list[torch.Tensor], y0: int, x0: int, h: int, w: int) -> Features:
    """The features (and glass cells) of the pixel box (y0, x0, h, w); all four multiples of 32."""
    image = getattr(features, "image", None)
    return Features([f[..., y0 // s:(y0 + h) // s, x0 // s:(x0 + w) // s] for f, s in zip(features, STRIDES)],
                    _glass_of_box(getattr(features, "glass", None), y0, x0, h, w),
                    None if image is None else image[..., y0:y0 + h, x0:x0 + w])


def _glass_of_box(glass: torch.Tensor | None, y0: int, x0: int, h: int, w: int) -> torch.Tensor | None:
    """The glass cells of the pixel box (y0, x0, h, w), multiples of the cell; None when it holds
    none (the GroupNorms then run plain, as for an input without glass)."""
    if glass is None:
        return None
    c = GLASS_CELL
    box = glass[..., y0 // c:(y0 + h) // c, x0 // c:(x0 + w) // c]
    return box if bool(box.any()) else None


class FeatureCache:
    """Encoder features per image, computed on first use. Images are numpy arrays and are keyed by
    identity (the caller keeps them alive while the cache lives).

    Arguments:
      model: the :class:`~napari_dfa.model.DFASegModel` whose (frozen) encoder computes them.
      multiple: the model's input multiple.
    """

    def __init__(self, model, *, multiple: int = 32):
        self.model = model
        self.multiple = multiple
        self._cache: dict[int, tuple[np.ndarray, list[torch.Tensor]]] = {}

    def features(self, rgb: np.ndarray) -> list[torch.Tensor]:
        hit = self._cache.get(id(rgb))
        if hit is not None and hit[0] is rgb:
            return hit[1]
        feats = encode(self.model, rgb, multiple=self.multiple)
        self._cache[id(rgb)] = (rgb, feats)
        return feats

    def clear(self) -> None:
        self._cache.clear()


def decode_logits(model, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """B×K×H×W logits of the layers after the encoder on features of an H×W box."""
    return model.decode(features, size, glass=getattr(features, "glass", None),
                        image=getattr(features, "image", None))["logits"]


@torch.no_grad()
def logits_from_features(model, features: list[torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
    """1×K×H×W logits of an image from its features, decoded in the tiles whole-slide inference
    uses (about 1024 with 64 overlap, each tile's inner part kept), so that the class tokens read as much
    image at once as they do in :func:`napari_dfa.inference.segment`."""
    model.eval()
    h, w = shape
    H, W = features[0].shape[-2] * 4, features[0].shape[-1] * 4
    out = None
    for y0, y1, ky0, ky1 in _spans(H):
        for x0, x1, kx0, kx1 in _spans(W):
            tile = decode_logits(model, crop_features(features, y0, x0, y1 - y0, x1 - x0), (y1 - y0, x1 - x0))
            if out is None:
                out = torch.empty((1, tile.shape[1], H, W), dtype=tile.dtype, device=tile.device)
            out[..., ky0:ky1, kx0:kx1] = tile[..., ky0 - y0:ky1 - y0, kx0 - x0:kx1 - x0]
    return out[..., :h, :w]


def predict_from_features(model, features: list[torch.Tensor], shape: tuple[int, int]) -> np.ndarray:
    """H×W uint8 labels (1..K) of an image from its features (see :func:`logits_from_features`)."""
    logits = logits_from_features(model, features, shape)
    return (logits[0].argmax(0) + 1).to(torch.uint8).cpu().numpy()


@torch.no_grad()
def predict_region(segmenter, rgb: np.ndarray, cache: FeatureCache | None = None) -> np.ndarray:
    """H×W uint8 labels of ``segmenter`` on an image: from ``cache`` when its encoder is this
    model's (frozen fine-tuning shares it), else with a full forward pass per tile."""
    model = segmenter.model
    if cache is None:
        cache = FeatureCache(model, multiple=segmenter.input_multiple)
    return predict_from_features(model, cache.features(rgb), rgb.shape[:2])


def _spans(n: int) -> list[tuple[int, int, int, int]]:
    """Tiles (start, end) along an axis of ``n`` pixels (a multiple of 32) and the part of each that
    is kept (from the middle of the overlap with the tile before to that with the tile after)."""
    tile, step = PREDICT_TILE, PREDICT_TILE - 2 * PREDICT_OVERLAP
    if n <= tile:
        return [(0, n, 0, n)]
    starts = sorted({(v // 32) * 32 for v in [*range(0, n - tile, step), n - tile]})
    ends = [s + tile for s in starts]
    cuts = [0] + [(ends[i] + starts[i + 1]) // 2 for i in range(len(starts) - 1)] + [n]
    return [(s, e, cuts[i], cuts[i + 1]) for i, (s, e) in enumerate(zip(starts, ends))]
