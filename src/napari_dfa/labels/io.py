"""Label images in and out (no Qt): OME-Zarr labels, reading any of our label files, export by suffix.

All functions take labels as a numpy, zarr or dask array (h×w uint8, 0 = no class, 1..K classes)
at some level, with ``downsample`` (level-0 pixels per label pixel) and ``offset`` (the labels'
top-left in level-0 pixels, (y, x)) so that everything written is in level-0 coordinates.
Large arrays are read chunk rows at a time, except GeoJSON, which traces whole class masks
(export from a coarser pyramid level for very large slides: ``level=`` in :func:`read_labels`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ._common import ROWS, check_classes, row_blocks
from .areas import write_area_csv
from .geojson import write_geojson
from .store import ATTR, LabelsStore, multiscale_datasets, multiscale_levels, ome_block
from .tiff import read_tiff_labels, write_labels_tiff
from ..errors import DataError

logger = logging.getLogger(__name__)

# --- OME-Zarr -------------------------------------------------------------------------------------
def write_ome_zarr_labels(path, labels, class_names, class_colors=None, *, downsample: float = 1.0,
                          offset=(0.0, 0.0), chunk: int = 512, mpp: float | None = None) -> Path:
    """Write labels as an OME-Zarr (NGFF 0.5) label image with a display pyramid.

    ``image-label`` carries the class colours and names (``properties[].class``); see
    :mod:`napari_dfa.labels.store` for the layout. Returns the store path."""
    names, colors = check_classes(class_names, class_colors)
    store = LabelsStore.create(path, shape=labels.shape[:2], class_names=names, class_colors=colors,
                               chunk=chunk, downsample=downsample, translate=offset, info={"mpp": mpp})
    for y0, block in row_blocks(labels, max(chunk, ROWS // chunk * chunk)):
        store.write_rows(y0, block.astype(np.uint8, copy=False))
    store.finish()
    return store.path


# --- reading back ---------------------------------------------------------------------------------
def read_labels(path, *, level: int = 0):
    """Open labels written by napari-dfa (OME-Zarr store or TIFF) or any NGFF label image.

    Returns ``(labels, info)``: a lazy zarr array (or numpy for TIFF) of the requested pyramid
    level, and ``info`` with ``class_names``, ``class_colors``, ``downsample``, ``offset``, ``mpp``
    (downsample already multiplied by 2**level)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir() or path.suffix == ".zarr":
        return _read_zarr_labels(path, level)
    if path.suffix.lower() in (".tif", ".tiff"):
        return read_tiff_labels(path, level)
    raise DataError(f"{path}: unsupported labels file; give an OME-Zarr labels store (.zarr) or a TIFF")


def _read_zarr_labels(path: Path, level: int):
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = group.attrs.asdict()
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: not a zarr store ({exc})") from exc
    ome = ome_block(attrs)
    datasets = multiscale_datasets(group)
    if not datasets:
        raise DataError(f"{path}: no OME-Zarr multiscales metadata; is it a labels store?")
    levels = multiscale_levels(group)
    if not 0 <= level < len(levels):
        raise DataError(f"{path}: level {level} does not exist (the store has {len(levels)} levels)")
    arr = levels[level]
    if arr.ndim != 2:
        arr = arr[(0,) * (arr.ndim - 2)]  # t/c/z leading axes of size 1
    ours = attrs.get(ATTR, {})
    image_label = ome.get("image-label", {})
    props = {p["label-value"]: p for p in image_label.get("properties", [])}
    cols = {c["label-value"]: c.get("rgba", [128, 128, 128, 255]) for c in image_label.get("colors", [])}
    n = max([v for v in props if v > 0] + [v for v in cols if v > 0] + [0])
    names = ours.get("class_names") or [str(props.get(v, {}).get("class", f"class {v}")) for v in range(1, n + 1)]
    colors = ours.get("class_colors") or [tuple(cols.get(v, [128, 128, 128])[:3]) for v in range(1, n + 1)]
    scale, translate = 1.0, [0.0, 0.0]
    if "downsample" in ours:  # ours: level-0 pixels whatever unit the NGFF transforms use
        scale, translate = float(ours["downsample"]) * 2**level, [float(v) for v in ours.get("translate", (0, 0))]
    else:
        for t in datasets[level].get("coordinateTransformations", []):
            if t.get("type") == "scale":
                scale = float(t["scale"][-1])
            if t.get("type") == "translation":
                translate = [float(v) for v in t["translation"][-2:]]
    info = {"class_names": list(names), "class_colors": [tuple(c) for c in colors], "downsample": scale,
            "offset": tuple(translate), "mpp": ours.get("mpp")}
    return arr, info


def export_labels(src, dst, *, level: int = 0, split: bool = False) -> Path:
    """Convert a labels store/TIFF to ``dst`` by its suffix: .geojson/.json, .tif/.tiff, .zarr, .csv."""
    labels, info = read_labels(src, level=level)
    dst = Path(dst)
    kw = dict(downsample=info["downsample"], offset=info["offset"])
    suffix = dst.suffix.lower()
    if suffix in (".geojson", ".json"):
        return write_geojson(dst, labels, info["class_names"], info["class_colors"], split=split, **kw)
    if suffix in (".tif", ".tiff"):
        return write_labels_tiff(dst, labels, info["class_names"], info["class_colors"], mpp=info["mpp"], **kw)
    if suffix == ".zarr":
        return write_ome_zarr_labels(dst, labels, info["class_names"], info["class_colors"], mpp=info["mpp"], **kw)
    if suffix == ".csv":
        return write_area_csv(dst, labels, info["class_names"], downsample=info["downsample"], mpp=info["mpp"])
    raise DataError(f"{dst}: unknown export format {suffix!r}; use .geojson, .tif, .zarr or .csv")

