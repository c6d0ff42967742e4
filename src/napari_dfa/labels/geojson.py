"""Label images as QuPath GeoJSON (no Qt): one annotation per class, valid polygons in level-0 pixels."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np

from ..arrays import compute_local
from ..errors import DataError
from ._common import check_classes

# --- GeoJSON --------------------------------------------------------------------------------------
def labels_to_geojson(labels, classes, class_colors=None, downsample: float = 1.0, offset=(0, 0), *,
                      split: bool = False, caveat: str | None = None) -> dict:
    """QuPath-style GeoJSON FeatureCollection of the label regions, in level-0 pixels.

    One feature per class (a Polygon or MultiPolygon; ``split=True``: one per connected region),
    each ``{"type": "Feature", "id": <uuid4>, "geometry": ..., "properties": {"objectType":
    "annotation", "classification": {"name": ..., "color": [r, g, b]}}}`` — what QuPath writes
    for annotations. Rings are closed and pixel-exact (see :mod:`napari_dfa._polygons`); shells
    run counter-clockwise in the (x, y) numbers, as RFC 7946 asks.

    ``caveat`` (e.g. the slide lies outside the model's training data) goes with every feature:
    its ``caveat`` property, QuPath's ``metadata`` (shown with the annotation) and its name, which
    QuPath lists ("tumour (caution: see caveat)"); and with the collection (``napari_dfa``)."""
    from shapely.geometry import mapping

    from .polygons import mask_to_geometry

    names, colors = check_classes(classes, class_colors)
    arr = compute_local(labels if hasattr(labels, "compute") else labels[...])
    features = []
    for value in np.unique(arr):
        if value == 0:
            continue
        if value > len(names):
            raise DataError(f"label {int(value)} has no class name (the labels list {len(names)} classes)")
        geom = mask_to_geometry(arr == value, scale=float(downsample), offset=offset)
        if geom is None:
            continue
        parts = list(getattr(geom, "geoms", [geom])) if split else [geom]
        for part in parts:
            gj = mapping(part)
            properties = {
                "objectType": "annotation",
                "classification": {"name": names[value - 1], "color": list(colors[value - 1])},
            }
            if caveat:
                properties.update(name=f"{names[value - 1]} (caution: see caveat)", caveat=caveat,
                                  metadata={"napari-dfa caveat": caveat})
            features.append({
                "type": "Feature",
                "id": str(uuid.uuid4()),
                "geometry": {"type": gj["type"], "coordinates": _listify(gj["coordinates"])},
                "properties": properties,
            })
    fc = {"type": "FeatureCollection", "features": features}
    if caveat:
        fc["napari_dfa"] = {"caveat": caveat}  # a foreign member (RFC 7946 6.1): QuPath ignores it
    return fc


def _listify(coords):
    """shapely's nested tuples → lists; integral floats written as ints (smaller files)."""
    if isinstance(coords, (tuple, list)) and coords and isinstance(coords[0], (int, float)):
        return [int(v) if float(v).is_integer() else float(v) for v in coords]
    return [_listify(c) for c in coords]


def write_geojson(path, labels, classes, class_colors=None, *, downsample: float = 1.0, offset=(0, 0),
                  split: bool = False, caveat: str | None = None) -> Path:
    """Write :func:`labels_to_geojson` to ``path`` (QuPath: File ▸ Import objects)."""
    path = Path(path)
    fc = labels_to_geojson(labels, classes, class_colors, downsample, offset, split=split, caveat=caveat)
    path.write_text(json.dumps(fc))
    return path


