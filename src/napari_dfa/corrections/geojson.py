"""QuPath GeoJSON annotations as corrections (no Qt): polygons with classes, rasterised onto a level."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from ..errors import DataError

logger = logging.getLogger(__name__)


def read_geojson_polygons(path: str | os.PathLike, class_names: list[str]) -> list[tuple[int, list]]:
    """``[(label, rings)]`` from a GeoJSON file; rings[0] is the exterior, the rest are holes.

    Accepts a FeatureCollection, a list of features (QuPath's older export) or a single feature.
    The class comes from ``properties.classification.name`` (QuPath), or a plain
    ``properties.classification`` / ``properties.class`` string; features without one are skipped.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable GeoJSON file ({exc})") from None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features") or []
    elif isinstance(doc, list):
        features = doc
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    else:
        raise DataError(f"{path}: expected a GeoJSON FeatureCollection of annotations")
    lowered = [n.lower() for n in class_names]
    out, skipped = [], 0
    for i, feat in enumerate(features):
        props = (feat or {}).get("properties") or {}
        name = _class_name(props)
        if name is None:
            skipped += 1
            continue
        if name.lower() not in lowered:
            raise DataError(f"{path}: feature {i} has class {name!r}, which the model does not know "
                            f"(classes: {', '.join(class_names)}); rename it in QuPath")
        label = lowered.index(name.lower()) + 1
        geom = (feat or {}).get("geometry") or {}
        gtype, coords = geom.get("type"), geom.get("coordinates")
        try:
            if gtype == "Polygon":
                out.append((label, [np.asarray(r, dtype=float)[:, :2] for r in coords]))
            elif gtype == "MultiPolygon":
                out.extend((label, [np.asarray(r, dtype=float)[:, :2] for r in poly]) for poly in coords)
            else:
                skipped += 1
        except (TypeError, ValueError, IndexError) as exc:
            raise DataError(f"{path}: feature {i} has malformed coordinates ({exc})") from None
    if skipped:
        logger.warning("%s: skipped %d features without a class or without a polygon", path, skipped)
    if not out:
        raise DataError(f"{path}: no class-annotated polygons found (set a classification in QuPath)")
    return out


def rasterise_polygons(polygons: list[tuple[int, list]], *, downsample: float = 1.0,
                       level_shape: tuple[int, int] | None = None, source: object = "polygons"
                       ) -> tuple[np.ndarray, tuple[int, int]]:
    """Draw labelled polygons (level-0 (x, y) vertices) on the grid of a level.

    Returns ``(mask, (y0, x0))``: uint8 labels over the polygons' bounding box and its top-left in
    level pixels. A pixel belongs to a polygon when its centre does (QuPath's convention).
    """
    from PIL import Image, ImageDraw

    pts = np.concatenate([r for _, rings in polygons for r in rings]) / downsample
    x0, y0 = np.floor(pts.min(axis=0)).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
    x0, y0 = max(x0, 0), max(y0, 0)
    if level_shape is not None:
        y1, x1 = min(y1, int(level_shape[0])), min(x1, int(level_shape[1]))
    if x1 <= x0 or y1 <= y0:
        raise DataError(f"{source}: the polygons lie outside the slide")
    img = Image.new("L", (int(x1 - x0), int(y1 - y0)), 0)
    draw = ImageDraw.Draw(img)
    for label, rings in polygons:
        for j, ring in enumerate(rings):
            # PIL fills integer points; pixel i's centre is i + 0.5 in QuPath coordinates.
            xy = [(float(x) / downsample - x0 - 0.5, float(y) / downsample - y0 - 0.5) for x, y in ring]
            if len(xy) >= 3:
                draw.polygon(xy, fill=int(label) if j == 0 else 0)
    return np.asarray(img, dtype=np.uint8), (int(y0), int(x0))


def _class_name(props: dict) -> str | None:
    cls = props.get("classification")
    if isinstance(cls, dict) and cls.get("name"):
        return str(cls["name"])
    for key in ("classification", "class"):
        if isinstance(props.get(key), str) and props[key]:
            return props[key]
    return None


