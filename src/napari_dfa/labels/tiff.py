"""Label images as tiled, zlib-compressed pyramidal TIFFs (no Qt)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..arrays import compute_local
from ..errors import DataError
from ._common import ATTR, check_classes
from .pyramid import pyramid_shapes

# --- TIFF -----------------------------------------------------------------------------------------
def write_labels_tiff(path, labels, classes, class_colors=None, *, downsample: float = 1.0,
                      offset=(0.0, 0.0), tile: int = 256, mpp: float | None = None) -> Path:
    """Write labels as a tiled, zlib-compressed pyramidal TIFF (BigTIFF, SubIFD pyramid).

    The ImageDescription of the first page is JSON: ``{"napari_dfa": {"class_names", "class_colors",
    "downsample", "offset", "mpp"}}``; a reader gets the classes back with :func:`read_labels`.
    The resolution tags hold pixels per centimetre when ``mpp`` is known."""
    import tifffile

    names, colors = check_classes(classes, class_colors)
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
            band = compute_local(band)[:, ::f]
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


def read_tiff_labels(path: Path, level: int):
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
    if not isinstance(meta, dict):  # another writer's JSON (synth's truth keeps a plain string there)
        meta = {}
    n = int(data.max()) if data.size else 0
    names = meta.get("class_names") or [f"class {i}" for i in range(1, n + 1)]
    info = {"class_names": names, "class_colors": [tuple(c) for c in meta.get("class_colors", [])],
            "downsample": float(meta.get("downsample", 1.0)) * 2**level,
            "offset": tuple(meta.get("offset", (0.0, 0.0))), "mpp": meta.get("mpp")}
    return data, info


