"""A pathologist's corrections (no Qt): the on-disk store (keyed by slide content), QuPath GeoJSON
import and export, replay, the guard and the correct → fine-tune → judge workflow.

Labels convention: 0 = not corrected (the ignore label), 1..K the class painted.
"""

from __future__ import annotations

from .geojson import geojson_classes, matched_names, missing_classes, read_geojson_polygons
from .rasterise import rasterise_polygons
from .replay import replay_from_prediction
from .store import CorrectionPatch, CorrectionStore, slide_content_key

__all__ = ["CorrectionPatch", "CorrectionStore", "geojson_classes", "matched_names", "missing_classes", "rasterise_polygons",
           "read_geojson_polygons", "replay_from_prediction", "slide_content_key"]
