"""napari writers for labels layers (npe2 single-layer signature ``(path, data, meta) -> [paths]``).

Class names come from the layer's ``features`` (a ``class`` column indexed by label, what the
Segment widget sets) or ``metadata["napari_dfa"]["class_names"]``; colours are the ones the layer
shows (its label colormap). The layer's ``scale`` and ``translate`` (level-0 pixels for layers over our slides) place
the output in level-0 coordinates. Multiscale data is written from its finest level.

A result the Segment widget found beyond its model (``metadata["napari_dfa"]["caveat"]``, set
when the domain check warns) carries that caveat into the file: GeoJSON properties, the TIFF's
description, the OME-Zarr's attributes.
"""

from __future__ import annotations

import logging

import numpy as np

from . import labels
from .classes import ClassSet

logger = logging.getLogger(__name__)


def _classes(data, meta: dict) -> ClassSet:
    md = (meta.get("metadata") or {}).get("napari_dfa", {}) or {}
    k = 0
    names: dict[int, str] = {}
    features = meta.get("features")
    if features is not None and len(features) and "class" in getattr(features, "columns", []):
        idx = features["index"] if "index" in features.columns else range(len(features))
        for i, name in zip(idx, features["class"]):
            if int(i) > 0:
                names[int(i)] = str(name)
    for i, name in enumerate(md.get("class_names") or [], start=1):
        names.setdefault(i, str(name))
    k = max(list(names) + [0])
    if k == 0:
        k = int(np.max(data)) if np.size(data) else 0
    colors: dict[int, tuple[int, int, int]] = {}
    cmap = meta.get("colormap")
    if hasattr(cmap, "map") and k:
        # The colours the user sees (direct or cyclic label colormap).
        rgba = np.asarray(cmap.map(np.arange(1, k + 1)))
        colors = {i + 1: tuple(int(round(255 * float(v))) for v in rgba[i, :3]) for i in range(k)}
    for i, c in enumerate(md.get("class_colors") or [], start=1):
        colors.setdefault(i, tuple(int(v) for v in c[:3]))
    out_names = [names.get(i, f"class {i}") for i in range(1, k + 1)]
    out_colors = [colors.get(i, (128, 128, 128)) for i in range(1, k + 1)]
    return ClassSet.of(out_names, out_colors, name="layer")


def _caveat(meta: dict) -> str | None:
    return ((meta.get("metadata") or {}).get("napari_dfa", {}) or {}).get("caveat") or None


def _placement(meta: dict) -> tuple[float, tuple[float, float]]:
    scale = meta.get("scale") or (1.0, 1.0)
    translate = meta.get("translate") or (0.0, 0.0)
    return float(scale[-1]), (float(translate[-2]), float(translate[-1]))


def _finest(data):
    from collections.abc import Sequence

    # a pyramid: a list, or napari's MultiScaleData (a Sequence) for a multiscale layer
    arr = data[0] if isinstance(data, Sequence) else data
    if arr.ndim != 2:
        raise ValueError(f"only 2-D labels can be exported, this layer has shape {arr.shape}")
    return arr


def write_labels_zarr(path: str, data, meta: dict) -> list[str]:
    arr = _finest(data)
    classes = _classes(arr, meta)
    ds, off = _placement(meta)
    out = labels.write_ome_zarr_labels(path, arr, classes, downsample=ds, offset=off)
    if _caveat(meta):
        labels.add_caveat(out, _caveat(meta))
    return [str(out)]


def write_labels_tiff(path: str, data, meta: dict) -> list[str]:
    arr = _finest(data)
    classes = _classes(arr, meta)
    ds, off = _placement(meta)
    out = labels.write_labels_tiff(path, arr, classes, downsample=ds, offset=off)
    if _caveat(meta):
        labels.add_caveat(out, _caveat(meta))
    return [str(out)]


def write_labels_geojson(path: str, data, meta: dict) -> list[str]:
    arr = _finest(data)
    classes = _classes(arr, meta)
    ds, off = _placement(meta)
    return [str(labels.write_geojson(path, arr, classes, downsample=ds, offset=off, caveat=_caveat(meta)))]
