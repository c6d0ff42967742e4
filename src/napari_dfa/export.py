"""Exports of label images (no Qt): OME-Zarr labels, tiled pyramidal TIFF, QuPath GeoJSON, area CSV.

All functions take labels as a numpy, zarr or dask array (h×w uint8, 0 = no class, 1..K classes)
at some level, with ``downsample`` (level-0 pixels per label pixel) and ``offset`` (the labels'
top-left in level-0 pixels, (y, x)) so that everything written is in level-0 coordinates.
Large arrays are read chunk rows at a time, except GeoJSON, which traces whole class masks
(export from a coarser pyramid level for very large slides: ``level=`` in :func:`read_labels`).
"""

from __future__ import annotations

import csv
import json
import logging
import uuid
from pathlib import Path

import numpy as np

from ._zarr_out import ATTR, LabelsStore, pyramid_shapes
from .errors import DataError

logger = logging.getLogger(__name__)

ROWS = 1024  # rows read at a time from zarr/dask sources


def _rows(labels, rows: int = ROWS):
    """(y0, block) over full-width row blocks of a numpy/zarr/dask array."""
    for y0 in range(0, labels.shape[0], rows):
        block = labels[y0 : y0 + rows]
        yield y0, np.asarray(block.compute() if hasattr(block, "compute") else block)


def _check_classes(class_names, class_colors):
    names = [str(n) for n in class_names]
    colors = [tuple(int(v) for v in c)[:3] for c in (class_colors or [])]
    if len(colors) < len(names):
        from .model.segmenter import _default_colors  # only for labels saved without colours

        colors += _default_colors(len(names))[len(colors):]
    return names, colors


# --- OME-Zarr -------------------------------------------------------------------------------------
def write_ome_zarr_labels(path, labels, class_names, class_colors=None, *, downsample: float = 1.0,
                          offset=(0.0, 0.0), chunk: int = 512, mpp: float | None = None) -> Path:
    """Write labels as an OME-Zarr (NGFF 0.5) label image with a display pyramid.

    ``image-label`` carries the class colours and names (``properties[].class``); see
    :mod:`napari_dfa._zarr_out` for the layout. Returns the store path."""
    names, colors = _check_classes(class_names, class_colors)
    store = LabelsStore.create(path, shape=labels.shape[:2], class_names=names, class_colors=colors,
                               chunk=chunk, downsample=downsample, translate=offset, info={"mpp": mpp})
    for y0, block in _rows(labels, max(chunk, ROWS // chunk * chunk)):
        store.write_rows(y0, block.astype(np.uint8, copy=False))
    store.finish()
    return store.path


# --- TIFF -----------------------------------------------------------------------------------------
def write_labels_tiff(path, labels, class_names, class_colors=None, *, downsample: float = 1.0,
                      offset=(0.0, 0.0), tile: int = 256, mpp: float | None = None) -> Path:
    """Write labels as a tiled, zlib-compressed pyramidal TIFF (BigTIFF, SubIFD pyramid).

    The ImageDescription of the first page is JSON: ``{"napari_dfa": {"class_names", "class_colors",
    "downsample", "offset", "mpp"}}``; a reader gets the classes back with :func:`read_labels`.
    The resolution tags hold pixels per centimetre when ``mpp`` is known."""
    import tifffile

    names, colors = _check_classes(class_names, class_colors)
    path = Path(path)
    h, w = (int(v) for v in labels.shape[:2])
    shapes = pyramid_shapes((h, w), min_size=tile)
    desc = json.dumps({ATTR: {"class_names": names, "class_colors": [list(c) for c in colors],
                              "downsample": float(downsample), "offset": [float(o) for o in offset],
                              "mpp": mpp}})

    def tiles(level: int):
        # Level k is level 0 subsampled by 2**k (nearest), read one tile row band at a time.
        f = 2**level
        lh, lw = shapes[level]
        for ty in range(0, lh, tile):
            band = labels[ty * f : min(lh, ty + tile) * f : f]
            band = np.asarray(band.compute() if hasattr(band, "compute") else band)[:, ::f]
            for tx in range(0, lw, tile):
                yield np.ascontiguousarray(band[:, tx : tx + tile], dtype=np.uint8)

    kw = dict(tile=(tile, tile), dtype=np.uint8, compression="zlib", photometric="minisblack")
    res = {}
    if mpp:
        res = dict(resolution=(1e4 / (mpp * downsample), 1e4 / (mpp * downsample)), resolutionunit="CENTIMETER")
    try:
        with tifffile.TiffWriter(path, bigtiff=True) as tif:
            tif.write(tiles(0), shape=(h, w), subifds=len(shapes) - 1, description=desc, metadata=None, **res, **kw)
            for k in range(1, len(shapes)):
                tif.write(tiles(k), shape=shapes[k], subfiletype=1, metadata=None, **kw)
    except OSError as exc:
        raise DataError(f"{path}: cannot write the TIFF ({exc})") from exc
    return path


# --- GeoJSON --------------------------------------------------------------------------------------
def labels_to_geojson(labels, class_names, class_colors=None, downsample: float = 1.0, offset=(0, 0), *,
                      split: bool = False) -> dict:
    """QuPath-style GeoJSON FeatureCollection of the label regions, in level-0 pixels.

    One feature per class (a Polygon or MultiPolygon; ``split=True``: one per connected region),
    each ``{"type": "Feature", "id": <uuid4>, "geometry": ..., "properties": {"objectType":
    "annotation", "classification": {"name": ..., "color": [r, g, b]}}}`` — what QuPath writes
    for annotations. Rings are closed and pixel-exact (see :mod:`napari_dfa._polygons`); shells
    run counter-clockwise in the (x, y) numbers, as RFC 7946 asks."""
    from shapely.geometry import mapping

    from ._polygons import mask_to_geometry

    names, colors = _check_classes(class_names, class_colors)
    arr = np.asarray(labels.compute() if hasattr(labels, "compute") else labels[...])
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
            features.append({
                "type": "Feature",
                "id": str(uuid.uuid4()),
                "geometry": {"type": gj["type"], "coordinates": _listify(gj["coordinates"])},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": names[value - 1], "color": list(colors[value - 1])},
                },
            })
    return {"type": "FeatureCollection", "features": features}


def _listify(coords):
    """shapely's nested tuples → lists; integral floats written as ints (smaller files)."""
    if isinstance(coords, (tuple, list)) and coords and isinstance(coords[0], (int, float)):
        return [int(v) if float(v).is_integer() else float(v) for v in coords]
    return [_listify(c) for c in coords]


def write_geojson(path, labels, class_names, class_colors=None, *, downsample: float = 1.0, offset=(0, 0),
                  split: bool = False) -> Path:
    """Write :func:`labels_to_geojson` to ``path`` (QuPath: File ▸ Import objects)."""
    path = Path(path)
    fc = labels_to_geojson(labels, class_names, class_colors, downsample, offset, split=split)
    path.write_text(json.dumps(fc))
    return path


# --- areas ----------------------------------------------------------------------------------------
def class_areas(labels, class_names, *, downsample: float = 1.0, mpp: float | None = None) -> list[dict]:
    """Per-class area and share of the labelled (non-zero) area.

    Returns one dict per class: ``class``, ``label``, ``pixels`` (at the labels' level),
    ``area_px0`` (level-0 pixels), ``area_mm2`` (when ``mpp`` is known, else None), ``percent``."""
    counts = np.zeros(256, dtype=np.int64)
    for _, block in _rows(labels):
        counts += np.bincount(block.ravel(), minlength=256)[:256]
    names = [str(n) for n in class_names]
    labelled = int(counts[1 : len(names) + 1].sum())
    rows = []
    for i, name in enumerate(names, start=1):
        px = int(counts[i])
        area0 = px * float(downsample) ** 2
        rows.append({
            "class": name, "label": i, "pixels": px, "area_px0": area0,
            "area_mm2": None if mpp is None else area0 * (mpp * 1e-3) ** 2,
            "percent": 100.0 * px / labelled if labelled else 0.0,
        })
    return rows


def write_area_csv(path, labels, class_names, *, downsample: float = 1.0, mpp: float | None = None) -> Path:
    """Write :func:`class_areas` as CSV (e.g. a tumour–stroma ratio is two rows of it)."""
    path = Path(path)
    rows = class_areas(labels, class_names, downsample=downsample, mpp=mpp)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["class", "label", "pixels", "area_px0", "area_mm2", "percent"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "area_mm2": "" if r["area_mm2"] is None else f"{r['area_mm2']:.6g}",
                             "percent": f"{r['percent']:.4f}"})
    return path


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
        return _read_tiff_labels(path, level)
    raise DataError(f"{path}: unsupported labels file; give an OME-Zarr labels store (.zarr) or a TIFF")


def _read_zarr_labels(path: Path, level: int):
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = group.attrs.asdict()
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: not a zarr store ({exc})") from exc
    ome = attrs.get("ome", attrs)
    try:
        datasets = ome["multiscales"][0]["datasets"]
    except (KeyError, IndexError, TypeError):
        raise DataError(f"{path}: no OME-Zarr multiscales metadata; is it a labels store?") from None
    if not 0 <= level < len(datasets):
        raise DataError(f"{path}: level {level} does not exist (the store has {len(datasets)} levels)")
    arr = group[datasets[level]["path"]]
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


def labels_layer_data(path):
    """``(levels, kwargs, "labels")`` for napari when ``path`` is an NGFF label image (e.g. a
    ``napari-dfa predict`` store), else None. Placed like our slide reader places the image
    (micrometres when the slide's mpp is known), with the class colours and names."""
    path = Path(path)
    if not path.is_dir() or not ((path / "zarr.json").exists() or (path / ".zattrs").exists()):
        return None
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = group.attrs.asdict()
    except Exception:  # noqa: BLE001 - not ours to judge: the slide reader reports it
        return None
    ome = attrs.get("ome", attrs)
    if "image-label" not in ome or "multiscales" not in ome:
        return None
    import dask.array as da

    datasets = ome["multiscales"][0]["datasets"]
    levels = [da.from_zarr(group[d["path"]]) for d in datasets]
    _, info = _read_zarr_labels(path, 0)
    mpp = info["mpp"] or 1.0
    unit = {"units": ("um", "um")} if info["mpp"] else {}
    colors = {0: [0.0, 0.0, 0.0, 0.0], None: [0.0, 0.0, 0.0, 0.0]}
    colors.update({i: [c / 255 for c in rgb] + [1.0] for i, rgb in enumerate(info["class_colors"], start=1)})
    kwargs = {
        "name": path.name[: -len(".zarr")] if path.name.endswith(".zarr") else path.name,
        "multiscale": len(levels) > 1,
        "scale": (info["downsample"] * mpp,) * 2,
        "translate": tuple(float(t) * mpp for t in info["offset"]),
        "colormap": colors,
        "features": {"index": list(range(len(info["class_names"]) + 1)),
                     "class": ["unlabelled", *info["class_names"]]},
        "opacity": 0.5,
        "metadata": {"napari_dfa": {"store": str(path), "class_names": info["class_names"],
                                    "class_colors": [list(c) for c in info["class_colors"]]}},
        **unit,
    }
    return (levels if len(levels) > 1 else levels[0], kwargs, "labels")


def _read_tiff_labels(path: Path, level: int):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if not 0 <= level < len(tif.series[0].levels):
                raise DataError(f"{path}: level {level} does not exist ({len(tif.series[0].levels)} levels)")
            data = tif.series[0].levels[level].asarray()
            desc = page.description
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot read the TIFF ({exc})") from exc
    try:
        meta = json.loads(desc).get(ATTR, {})
    except (ValueError, AttributeError):
        meta = {}
    n = int(data.max()) if data.size else 0
    names = meta.get("class_names") or [f"class {i}" for i in range(1, n + 1)]
    info = {"class_names": names, "class_colors": [tuple(c) for c in meta.get("class_colors", [])],
            "downsample": float(meta.get("downsample", 1.0)) * 2**level,
            "offset": tuple(meta.get("offset", (0.0, 0.0))), "mpp": meta.get("mpp")}
    return data, info


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


__all__ = [
    "class_areas", "export_labels", "labels_layer_data", "labels_to_geojson", "read_labels",
    "write_area_csv", "write_geojson", "write_labels_tiff", "write_ome_zarr_labels",
]
