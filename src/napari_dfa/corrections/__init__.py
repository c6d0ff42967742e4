"""A pathologist's corrections (no Qt): the on-disk store, QuPath GeoJSON import, and replay.

Labels convention: 0 = not corrected (the ignore label), 1..K the class painted.
"""

from __future__ import annotations

from .geojson import rasterise_polygons, read_geojson_polygons
from .replay import replay_from_prediction
from .store import CorrectionPatch, CorrectionStore

__all__ = ["CorrectionPatch", "CorrectionStore", "rasterise_polygons", "read_geojson_polygons",
           "replay_from_prediction"]
