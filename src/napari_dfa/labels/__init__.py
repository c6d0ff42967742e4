"""Label images (no Qt): the one OME-Zarr labels store, reading labels back, and the exports
pathologists use — QuPath GeoJSON, pyramidal TIFF, per-class areas.

All writers take labels as a numpy, zarr or dask array (h×w uint8, 0 = no class, 1..K classes)
at some level, with ``downsample`` (level-0 pixels per label pixel) and ``offset`` (the labels'
top-left in level-0 pixels, (y, x)) so that everything written is in level-0 coordinates.
"""

from __future__ import annotations

from .areas import class_areas, write_area_csv
from .caveat import add_caveat, read_caveat
from .geojson import labels_to_geojson, write_geojson
from .io import export_labels, label_levels, read_labels, write_ome_zarr_labels
from .tiff import write_labels_tiff

# The store itself is napari_dfa.labels.store.LabelsStore: imported from its module, so that the
# import contract sees who uses it (the widgets must not: they read levels with label_levels).
__all__ = [
    "add_caveat", "class_areas", "export_labels", "label_levels", "labels_to_geojson", "read_caveat",
    "read_labels", "write_area_csv", "write_geojson", "write_labels_tiff", "write_ome_zarr_labels",
]
