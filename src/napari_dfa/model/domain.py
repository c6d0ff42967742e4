"""Does a slide look like what the model was trained on? (no Qt, no slide reading)

A model trained on one kind of tissue and stain gives confident nonsense on another (the demo
model, trained on synthetic tissue only, calls benign epidermis tumour on a real H&E scan, with a
dark uncertainty map). Uncertainty does not reveal it; comparing the slide with the training data
does. A checkpoint keeps, under ``metadata["domain"]``, what its training tiles looked like, in
three groups of per-tile descriptors:

- ``colour``: mean and standard deviation of R, G, B over the tile's tissue pixels;
- ``stain``: the tile's two stain vectors in optical density (Macenko's method: the extreme
  directions of the tissue pixels' OD in the plane of its two main axes), hematoxylin-like first;
  H&E, IHC (hematoxylin + DAB) or a special stain differ here first;
- ``features``: the model's own encoder features at stride 4, averaged over tissue, so
  tissue of another kind (or a scanner whose texture differs) shows even in a familiar stain.

For each group the checkpoint stores the mean and spread over its training tiles (for the features
also their main axes) and a threshold: the 99th percentile of the training tiles' own distances
(see :func:`_group_distances`), times :data:`MARGIN`. :func:`domain_check` computes the same descriptors on tiles of the
new slide; a group's distance is the median over those tiles divided by its threshold, and the
slide is *far* when any group exceeds 1.

Before any of that, a slide that is not H&E at all (IHC, haematoxylin alone, greyscale,
fluorescence: :mod:`napari_dfa.model.stain_kind`) is said to be so, whatever the groups say, also
by a model without statistics; matching its stain is not suggested.

Reading tiles from a slide is not the model's business: ``napari_dfa.inference.domain`` samples
tissue tiles from a slide and calls :func:`domain_check`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, DataError
from .stain import OD_TISSUE, StainFit, optical_density, stain_vectors  # noqa: F401 - stain_vectors: public here too
from .stain_kind import StainKind, stain_kind

logger = logging.getLogger(__name__)

DOMAIN_VERSION = 1
TILE = 256  # descriptor tile edge; callers cut larger images into tiles of this size
MIN_TISSUE = 0.2  # a tile with less tissue than this share says little; skipped
# Encoder stage whose features describe a tile: stride 4 sees texture (nuclei, fibres). Deeper
# stages pool it away: pixel-shuffled tiles (the colours of tissue, no structure) sat at 1.07 of
# the threshold at stride 8 with the first demo model and at 0.56 with the one trained on slide
# tiles; at stride 4 at 1.77 and 2.08, with the training's own held-out tiles at ~0.4 either way.
FEATURE_STAGE = 0
FEATURE_COMPONENTS = 8  # main axes of the training tiles' features kept in the checkpoint
MARGIN = 1.5  # threshold = this × the 99th percentile of the training tiles' own distances
# Floors of the per-value spread, so a group that barely varied in training (synthetic stains are
# drawn from a narrow range) does not flag every real slide over a difference nobody could see.
STD_FLOOR = {"colour": 3.0, "stain": 0.02, "features": 1e-3}
GROUP_WORDS = {"colour": "colour", "stain": "stain", "features": "tissue appearance (the model's features)"}


@dataclass
class DomainReport:
    """Outcome of :func:`domain_check`.

    Arguments:
      distance: the largest group distance (1 = the edge of the training data); NaN when nothing
        could be measured (no tissue tiles, or a model without domain statistics).
      far: True when the slide lies outside what the model was trained on.
      message: plain words for the user (empty when nothing is to be said).
      groups: distance per group (``colour``, ``stain``, ``features``).
      tiles: tiles measured.
      stain: what the tiles' colours say the stain is (:class:`~napari_dfa.model.stain_kind.StainKind`).
    """

    distance: float
    far: bool
    message: str
    groups: dict = field(default_factory=dict)
    tiles: int = 0
    stain: StainKind | None = None

    @property
    def caveat(self) -> str | None:
        """What every export of a result on this slide carries (GeoJSON, areas CSV, overlay title)
        when the slide is beyond the model; None when it is not."""
        return f"Caution: {self.message}" if self.far and self.message else None

    @property
    def not_he(self) -> bool:
        """The slide is not H&E (IHC, haematoxylin alone, grey, fluorescence)."""
        return self.stain is not None and not self.stain.he

    @property
    def stain_far(self) -> bool:
        """The stain group alone lies outside the training data and the slide is H&E: matching
        the stain may help (it cannot turn another stain into H&E)."""
        return self.groups.get("stain", 0) > 1.0 and not self.not_he


# -- descriptors -------------------------------------------------------------------------------
def tissue_share(rgb: np.ndarray) -> float:
    """Share of pixels whose optical density in some channel exceeds :data:`OD_TISSUE`."""
    return float((optical_density(np.asarray(rgb)) > OD_TISSUE).any(axis=-1).mean())


def _colour(rgb: np.ndarray) -> np.ndarray:
    px = rgb.reshape(-1, 3)[(optical_density(rgb) > OD_TISSUE).any(axis=-1).ravel()].astype(np.float64)
    return np.concatenate([px.mean(0), px.std(0)])


@torch.no_grad()
def _features(segmenter, tiles: list[np.ndarray], stage: int = FEATURE_STAGE) -> np.ndarray:
    """Tissue-weighted mean of the encoder's features at ``stage`` (0: stride 4), one row per tile."""
    model = segmenter.model
    model.eval()
    out = []
    for rgb in tiles:
        m = 32
        h, w = (rgb.shape[0] // m) * m, (rgb.shape[1] // m) * m
        rgb = rgb[:h, :w]
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(segmenter.device).permute(2, 0, 1)[None].float() / 255
        x = (x - model.pixel_mean.to(x)) / model.pixel_std.to(x)
        f = model.encoder(x)[stage][0].float()  # C×h×w
        tissue = torch.from_numpy((optical_density(rgb) > OD_TISSUE).any(axis=-1).astype(np.float32))
        weight = torch.nn.functional.adaptive_avg_pool2d(tissue[None, None], f.shape[-2:])[0, 0].to(f.device)
        out.append(((f * weight).sum((1, 2)) / weight.sum().clamp_min(1e-6)).cpu().numpy())
    return np.stack(out).astype(np.float64)


def cut_tiles(images: Sequence[np.ndarray], size: int = TILE, *, limit: int = 64) -> list[np.ndarray]:
    """Tiles of ``size`` (edge) with enough tissue from RGB images of any size (an image smaller
    than ``size`` but at least 64 px is one tile), at most ``limit`` of them spread evenly."""
    tiles = []
    for i, img in enumerate(images):
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
            raise DataError(f"image {i}: expected an RGB uint8 H×W×3 array, got {img.shape} {img.dtype}")
        h, w = img.shape[:2]
        if min(h, w) < 64:
            continue
        th, tw = min(size, h), min(size, w)
        for y in range(0, h - th + 1, th):
            for x in range(0, w - tw + 1, tw):
                t = img[y:y + th, x:x + tw]
                if tissue_share(t) >= MIN_TISSUE:
                    tiles.append(t)
    if len(tiles) > limit:
        tiles = [tiles[int(j)] for j in np.linspace(0, len(tiles) - 1, limit).round()]
    return tiles


def descriptors(segmenter, tiles: Sequence[np.ndarray], stage: int = FEATURE_STAGE) -> dict[str, np.ndarray]:
    """Per-tile descriptors ``{"colour": n×6, "stain": n×6, "features": n×C}`` of tissue tiles
    (features of encoder ``stage``)."""
    tiles = [np.asarray(t) for t in tiles]
    stains = np.stack([stain_vectors(t).ravel() for t in tiles])
    return {"colour": np.stack([_colour(t) for t in tiles]), "stain": stains,
            "features": _features(segmenter, tiles, stage)}


def _feature_stage(domain: dict) -> int:
    """The encoder stage a checkpoint's feature statistics were taken at: written since the stage
    moved to stride 4; before, the text of ``feature_layer`` says (stage 1, stride 8)."""
    if isinstance(domain.get("feature_stage"), int):
        return domain["feature_stage"]
    found = re.search(r"encoder stage (\d+)", str(domain.get("feature_layer", "")))
    return int(found.group(1)) if found else 1


def _rounded(values) -> list[float]:
    return [round(float(v), 6) for v in np.asarray(values).ravel()]


def _group_distances(g: dict, values: np.ndarray) -> list[np.ndarray]:
    """Per-tile distances of one group, each to be divided by its own threshold.

    Colour and stain: the RMS z-score over the group's values. Features (many correlated values,
    where a per-value z-score dilutes a real difference): the RMS of the whitened coordinates on the
    training tiles' main axes (Mahalanobis) and the RMS of what those axes do not explain (the
    residual: a direction the training data never varied in)."""
    z = (values - np.asarray(g["mean"])) / np.asarray(g["std"])
    if "components" not in g:
        with np.errstate(invalid="ignore"):
            return [np.sqrt(np.nanmean(z ** 2, axis=1))]
    z = np.nan_to_num(z)
    v = np.asarray(g["components"], dtype=np.float64)
    p = z @ v.T
    mahalanobis = np.sqrt(np.mean((p / np.asarray(g["sigma"])) ** 2, axis=1))
    residual = np.linalg.norm(z - p @ v, axis=1) / np.sqrt(z.shape[1])
    return [mahalanobis, residual]


# -- statistics of the training data ---------------------------------------------------------
def domain_stats(segmenter, images: Sequence[np.ndarray], *, trained_on: str, tile: int = TILE,
                 limit: int = 64, feature_stage: int = FEATURE_STAGE) -> dict:
    """What the training data looked like, as stored under ``metadata["domain"]`` (JSON).

    Arguments:
      segmenter: the trained model (its encoder gives the feature statistics).
      images: training images (RGB uint8, any size; cut into ``tile`` tiles with tissue).
      trained_on: a few words for the warning, e.g. ``"synthetic tissue only"``.
      tile, limit: tile edge and the most tiles used.
      feature_stage: the encoder stage of the feature statistics (kept with them).
    """
    tiles = cut_tiles(images, tile, limit=limit)
    if len(tiles) < 4:
        raise DataError(f"domain statistics need at least 4 tiles with tissue, found {len(tiles)} in "
                        f"{len(images)} images")
    d = descriptors(segmenter, tiles, feature_stage)
    groups = {}
    for name, values in d.items():
        mean = np.nanmean(values, axis=0)
        std = np.maximum(np.nanstd(values, axis=0), STD_FLOOR[name])
        g = {"mean": _rounded(mean), "std": _rounded(std)}
        if name == "features":
            z = np.nan_to_num((values - mean) / std)
            _, s, vt = np.linalg.svd(z, full_matrices=False)
            k = min(FEATURE_COMPONENTS, len(z) - 1, z.shape[1])
            g["components"] = [_rounded(row) for row in vt[:k]]
            g["sigma"] = _rounded(np.maximum(s[:k] / np.sqrt(len(z)), 1e-6))
        own = _group_distances(g, values)
        g["threshold"] = [round(float(MARGIN * np.nanpercentile(o, 99)), 6) for o in own]
        groups[name] = g
    pixels = np.concatenate([t.reshape(-1, 3)[(optical_density(t) > OD_TISSUE).any(axis=-1).ravel()] for t in tiles])
    return {
        "version": DOMAIN_VERSION,
        "trained_on": str(trained_on),
        "tiles": len(tiles),
        "tile": int(tile),
        "rgb_mean": [round(float(v), 3) for v in pixels.mean(0)],
        "rgb_std": [round(float(v), 3) for v in pixels.std(0)],
        "stain_vectors": np.round(np.nanmean(d["stain"], axis=0).reshape(2, 3), 4).tolist(),
        # The training tiles' stain taken together: what a slide's stain is matched to (model/stain.py).
        "stain_reference": _stain_reference(tiles),
        "feature_layer": f"encoder stage {feature_stage} (stride {4 << feature_stage}), tissue-weighted mean",
        "feature_stage": int(feature_stage),
        "groups": groups,
    }


def _stain_reference(tiles) -> dict | None:
    """The tiles' stain (:class:`~napari_dfa.model.stain.StainFit`) as JSON; None when they hold
    too little stained tissue to fit one (the model then cannot match a slide's stain, and says so)."""
    try:
        return StainFit.fit(tiles).as_dict()
    except DataError as exc:
        logger.warning("no stain reference stored: %s", exc)
        return None


def domain_check(segmenter, rgb_tiles: Sequence[np.ndarray]) -> DomainReport:
    """How far ``rgb_tiles`` (RGB uint8 images of a slide, any size) lie from the model's training
    data. A model without ``metadata["domain"]`` gives distance NaN, ``far`` False and a message
    saying it cannot tell."""
    domain = segmenter.metadata.get("domain")
    kind = stain_kind([np.asarray(t) for t in rgb_tiles])
    trained_on = (domain or {}).get("trained_on") if isinstance(domain, dict) else None
    if not isinstance(domain, dict) or not isinstance(domain.get("groups"), dict):
        if not kind.he:  # no statistics needed to see that a slide is not H&E
            return DomainReport(float("nan"), True, kind.message(), stain=kind)
        return DomainReport(float("nan"), False, "this model does not record what its training data looked "
                            "like, so it cannot say whether this slide resembles it", stain=kind)
    tiles = cut_tiles(rgb_tiles, int(domain.get("tile", TILE)))
    if not tiles:
        if not kind.he:  # e.g. fluorescence: dark, no stained tissue in the OD sense
            return DomainReport(float("nan"), True, kind.message(trained_on), stain=kind)
        return DomainReport(float("nan"), False, "no tissue found to compare with the training data", stain=kind)
    d = descriptors(segmenter, tiles, _feature_stage(domain))
    groups = {}
    for name, values in d.items():
        g = domain["groups"].get(name)
        if not g or len(g["mean"]) != values.shape[1] or not g.get("threshold"):
            continue  # e.g. features of another encoder width
        ratios = [np.nanmedian(dist) / max(t, 1e-9) for dist, t in zip(_group_distances(g, values), g["threshold"])]
        groups[name] = round(float(np.nanmax(ratios)), 3)
    finite = [v for v in groups.values() if np.isfinite(v)]
    distance = max(finite) if finite else float("nan")
    far = bool(finite) and distance > 1.0
    trained_on = domain.get("trained_on") or "other data"
    if not kind.he:  # the first thing to say, and no advice to match the stain
        return DomainReport(distance, True, kind.message(trained_on), groups, len(tiles), stain=kind)
    if far:
        words = [GROUP_WORDS[n] for n, v in groups.items() if v > 1.0]
        what = ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else words[0]
        message = (f"this slide's {what} {'look' if len(words) > 1 else 'looks'} unlike the model's training data "
                   f"({distance:.1f}× beyond its range; trained on {trained_on}): expect errors, check the "
                   "result closely and correct it")
    else:
        message = ""
    return DomainReport(distance, far, message, groups, len(tiles), stain=kind)


# -- stamping a checkpoint --------------------------------------------------------------------
def write_domain_metadata(path: str | os.PathLike, domain: dict) -> Path:
    """Store ``domain`` under ``extra["domain"]`` of a checkpoint without touching its tensors.

    The metadata is read fresh right before writing and every other key is kept (other tools add
    their own keys to the same file); the write is atomic (temp file, then rename).
    """
    import tempfile

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own types
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc})") from None
    extra = json.loads(meta.get("extra", "{}") or "{}")
    extra["domain"] = domain
    meta["extra"] = json.dumps(extra, sort_keys=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("wrote domain statistics (%d tiles) into %s", domain.get("tiles", 0), path)
    return path


def stamp_checkpoints(paths, images, *, trained_on: str, limit: int = 64) -> dict[str, dict]:
    """Compute each checkpoint's domain statistics on ``images`` (its own weights give the
    features) and write them into it; the end of a training run calls this for best and last.

    Arguments:
      paths: checkpoint files (missing ones are skipped).
      images: the training images (RGB uint8), an iterable; at most ``4 × limit`` are read.
      trained_on: a few words for the warning (``"synthetic tissue only"``).

    Returns: ``{path: domain}`` of the files written."""
    from itertools import islice

    from .segmenter import load_model

    images = [np.asarray(im) for im in islice(iter(images), 4 * limit)]
    out = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        domain = domain_stats(load_model(path), images, trained_on=trained_on, limit=limit)
        write_domain_metadata(path, domain)
        out[str(path)] = domain
    return out
