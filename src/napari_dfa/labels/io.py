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

from ..classes import ClassSet
from ..ngff import ome_block
from ._common import ATTR, ROWS, check_classes, row_blocks
from .areas import write_area_csv
from .caveat import add_caveat, read_caveat
from .geojson import labels_to_geojson, write_geojson
from .ngff_meta import multiscale_datasets, multiscale_levels
from .outputs import atomic_output, check_destination
from .store import LabelsStore, completeness
from .tiff import read_tiff_labels, write_labels_tiff
from ..errors import DataError

logger = logging.getLogger(__name__)

# --- OME-Zarr -------------------------------------------------------------------------------------
def write_ome_zarr_labels(path, labels, classes, class_colors=None, *, downsample: float = 1.0,
                          offset=(0.0, 0.0), chunk: int = 512, mpp: float | None = None) -> Path:
    """Write labels as an OME-Zarr (NGFF 0.5) label image with a display pyramid.

    ``image-label`` carries the class colours and names (``properties[].class``); see
    :mod:`napari_dfa.labels.store` for the layout. Returns the store path."""
    names, colors = check_classes(classes, class_colors)
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
    level, and ``info`` with ``classes`` (a ClassSet; also as ``class_names``, ``class_colors``), ``downsample``, ``offset``, ``mpp``
    (downsample already multiplied by 2**level), and the completeness marker: ``completed``,
    ``rows_done``, ``rows_total``, ``fraction``, ``partial`` (an incomplete store is logged)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir() or path.suffix == ".zarr":
        labels, info = _read_zarr_labels(path, level)
    elif path.suffix.lower() in (".tif", ".tiff"):
        labels, info = read_tiff_labels(path, level)
    else:
        raise DataError(f"{path}: unsupported labels file; give an OME-Zarr labels store (.zarr) or a TIFF")
    info["classes"] = ClassSet.of(info["class_names"], info["class_colors"], name=path.name)
    info.update(_completeness_marker(path))
    info["caveat"] = read_caveat(path)  # a result beyond its model says so in every export
    if not info["completed"]:
        logger.warning("%s: %s", path, describe_incomplete(info))
    return labels, info


def _completeness_marker(path: Path) -> dict:
    """The completeness marker of our stores and TIFFs (see labels.store.completeness); labels
    written by other tools carry none and count as complete."""
    import json

    meta, rows_total = {}, None
    try:
        if path.is_dir() or path.suffix == ".zarr":
            import zarr

            group = zarr.open_group(str(path), mode="r")
            meta = dict(group.attrs.get(ATTR, {}) or {})
            if meta and "0" in group:
                rows_total = int(group["0"].shape[0])
        else:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                meta = json.loads(tif.pages[0].description or "{}").get(ATTR, {}) or {}
    except Exception:  # noqa: BLE001 - unreadable metadata was reported by the reader already
        meta = {}
    if "completed" not in meta:
        return {"completed": True, "rows_done": None, "rows_total": None, "fraction": 1.0, "partial": False}
    return completeness(meta, rows_total if rows_total is not None else int(meta.get("rows_total", 0)))


def describe_incomplete(info: dict) -> str:
    """``incomplete: 384 of 1024 rows segmented (37.5 %)``."""
    if info.get("rows_total"):
        return (f"incomplete: {info['rows_done']} of {info['rows_total']} rows segmented "
                f"({100 * info['fraction']:.1f} % of the region)")
    return "incomplete (the run that wrote it did not finish)"


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


EXPORT_SUFFIXES = (".geojson", ".json", ".tif", ".tiff", ".zarr", ".csv")


def export_labels(src, dst, *, level: int = 0, split: bool = False, partial: bool = False,
                  overwrite: bool = False) -> Path:
    """Convert a labels store/TIFF to ``dst`` by its suffix: .geojson/.json, .tif/.tiff, .zarr, .csv.

    Nothing is lost: an incomplete store (a run that did not finish) is refused unless
    ``partial``, and then every output says so (GeoJSON: a ``napari_dfa`` member and each
    feature's name; TIFF and .zarr: the completeness marker; CSV: a ``partial`` column). An
    existing ``dst`` needs ``overwrite``; a folder that is not our store is never replaced. The
    output is written beside ``dst`` and renamed into place when complete."""
    dst = Path(dst)
    suffix = dst.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise DataError(f"{dst}: unknown export format {suffix!r}; use .geojson, .tif, .zarr or .csv")
    check_destination(dst, overwrite=overwrite, source=src)
    labels, info = read_labels(src, level=level)
    if not info["completed"] and not partial:
        raise DataError(f"{src}: {describe_incomplete(info)}; finish it (napari-dfa predict ... --resume) "
                        "or pass --partial to export what is there, marked as partial")
    mark = None if info["completed"] else {
        "partial": True, "completed": False, "rows_done": info["rows_done"], "rows_total": info["rows_total"],
        "segmented_fraction": round(float(info["fraction"]), 6), "source": str(src)}
    kw = dict(downsample=info["downsample"], offset=info["offset"])
    with atomic_output(dst, overwrite=overwrite) as tmp:
        if suffix in (".geojson", ".json"):
            if mark is None:
                write_geojson(tmp, labels, info["classes"], split=split, caveat=info["caveat"], **kw)
            else:
                _write_partial_geojson(tmp, labels, info, mark, split=split)
        elif suffix in (".tif", ".tiff"):
            write_labels_tiff(tmp, labels, info["classes"], mpp=info["mpp"], **kw)
            if info["caveat"]:
                add_caveat(tmp, info["caveat"])
            if mark is not None:
                _mark_tiff(tmp, mark)
        elif suffix == ".zarr":
            write_ome_zarr_labels(tmp, labels, info["classes"], mpp=info["mpp"], **kw)
            store = LabelsStore.open(tmp)
            rename_multiscale(store.group, dst.name)  # it was written under the temporary name
            if mark is not None:
                store.update_info(**mark)
            if info["caveat"]:
                store.update_info(caveat=info["caveat"])
        else:
            write_area_csv(tmp, labels, info["classes"], downsample=info["downsample"], mpp=info["mpp"],
                           caveat=info["caveat"])
            if mark is not None:
                _mark_csv(tmp, mark)
    if mark is not None:
        logger.warning("%s: written from an incomplete store and marked partial (%s)", dst, describe_incomplete(info))
    return dst


def rename_multiscale(group, name: str) -> None:
    attrs = group.attrs.asdict()
    key = "ome" if "ome" in attrs else None
    block = dict(attrs[key]) if key else attrs
    if block.get("multiscales"):
        block["multiscales"] = [{**block["multiscales"][0], "name": name}, *block["multiscales"][1:]]
        group.attrs.update({key: block} if key else {"multiscales": block["multiscales"]})


def _partial_words(mark: dict) -> str:
    return (f"PARTIAL: {100 * mark['segmented_fraction']:.1f} % of the region segmented "
            f"({mark['rows_done']} of {mark['rows_total']} rows)")


def _write_partial_geojson(path: Path, labels, info: dict, mark: dict, *, split: bool) -> None:
    import json

    fc = labels_to_geojson(labels, info["classes"], None, info["downsample"], info["offset"],
                           split=split, caveat=info.get("caveat"))
    fc[ATTR] = mark  # a foreign member (RFC 7946 6.1): QuPath ignores it, our tools read it
    for feat in fc["features"]:  # what QuPath shows in its annotation list
        feat["properties"]["name"] = f"{feat['properties']['classification']['name']} ({_partial_words(mark)})"
    path.write_text(json.dumps(fc))


def _mark_tiff(path: Path, mark: dict) -> None:
    import json

    import tifffile

    desc = json.loads(tifffile.tiffcomment(path) or "{}")
    desc.setdefault(ATTR, {}).update(mark)
    tifffile.tiffcomment(path, json.dumps(desc))


def _mark_csv(path: Path, mark: dict) -> None:
    import csv

    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    rows[0].append("partial")
    for row in rows[1:]:
        row.append(_partial_words(mark))
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)



def label_levels(path) -> list:
    """The levels of a labels store (:class:`~napari_dfa.labels.store.LabelsStore`), finest first,
    read-only and lazy: what a viewer shows. A DataError when ``path`` is not a complete store."""
    from .store import LabelsStore

    return LabelsStore.open(path, mode="r").levels()
