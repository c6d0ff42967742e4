"""The zarr backend: OME-Zarr (NGFF 0.4 on zarr v2, 0.5 on zarr v3; bioformats2raw layout) and
plain zarr arrays or groups of arrays ``"0", "1", ...``.

Axes come from the NGFF ``multiscales`` metadata (``cyx``, ``yxc``, ``tczyx``, ...); a plain array
is read as ``YX``, ``YXC`` (last axis of 3 or 4) or ``CYX``. Microns per pixel come from the
``x`` scale of the first dataset (times any multiscale-wide scale) when the axis unit is a length.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zarr

from ._arrays import (
    GuardedArray,
    OpenedSlide,
    SlideLayoutError,
    chunk_edge,
    lazy_level,
    rgb_pyramid,
    to_channels_last,
)
from ..ngff import multiscales
from ..errors import SlideError

logger = logging.getLogger(__name__)

_UNIT_UM = {"micrometer": 1.0, "micron": 1.0, "um": 1.0, "µm": 1.0, "nanometer": 1e-3, "nm": 1e-3,
            "millimeter": 1e3, "mm": 1e3, "centimeter": 1e4, "cm": 1e4, "meter": 1e6, "m": 1e6,
            "angstrom": 1e-4, "picometer": 1e-6}


class _ZarrLevel:
    """Opens one array of the store; picklable (reopens the store in another process)."""

    def __init__(self, path: Path, key: str | None, array=None):
        self.path, self.key, self._array = path, key, array

    def __call__(self):
        if self._array is None:
            node = zarr.open(self.path, mode="r")
            self._array = node if self.key is None else node[self.key]
        return self._array

    def __getstate__(self):
        return {**self.__dict__, "_array": None}


def open_zarr(path: Path) -> OpenedSlide:
    """Open an OME-Zarr (first multiscale image) or a plain zarr array/group; SlideError on failure."""
    try:
        node = zarr.open(path, mode="r")
    except Exception as exc:
        raise SlideError(f"{path}: not a readable zarr store ({type(exc).__name__}: {exc}).") from exc
    try:
        return _open(node, Path(path))
    except SlideError:
        raise
    except Exception as exc:
        raise SlideError(f"{path}: cannot open the zarr store ({type(exc).__name__}: {exc}).") from exc


def _open(node, path: Path) -> OpenedSlide:
    prefix = ""
    if isinstance(node, zarr.Array):
        arrays, axes, mpp, meta = [(None, node)], _guess_axes(node.shape, path), None, {"vendor": "zarr"}
    else:
        attrs = node.attrs.asdict()
        found = multiscales(attrs)
        if not found and "0" in node and isinstance(node["0"], zarr.Group):
            # bioformats2raw layout: the first image lives in the group "0"
            prefix, node = "0/", node["0"]
            attrs = node.attrs.asdict()
            found = multiscales(attrs)
        if found:
            arrays, axes, mpp, meta = _from_multiscales(node, attrs, found[0], path)
        else:
            keys = sorted((k for k in node.array_keys() if k.isdigit()), key=int)
            if not keys:
                raise SlideLayoutError(
                    f"{path}: a zarr group without OME-NGFF 'multiscales' metadata or arrays '0', '1', ..."
                )
            arrays = [(k, node[k]) for k in keys]
            axes, mpp, meta = _guess_axes(arrays[0][1].shape, path), None, {"vendor": "zarr"}
    meta["format"] = "zarr"
    stored = []
    for i, (key, arr) in enumerate(arrays):
        full_key = None if key is None else prefix + key
        guarded = GuardedArray(path=path, shape=arr.shape, dtype=arr.dtype,
                               open_level=_ZarrLevel(path, full_key, arr),
                               what=f"array {full_key or '(root)'}")
        chunks = tuple(min(chunk_edge(c), 4096, n) if ax in "YX" else c
                       for ax, c, n in zip(axes, arr.chunks, arr.shape))
        stored.append(to_channels_last(lazy_level(guarded, chunks), axes, path=path))
    levels, downsamples = rgb_pyramid(stored, path=path)
    meta["stored_levels"] = len(arrays)
    return OpenedSlide(levels=levels, downsamples=downsamples, mpp=mpp, metadata=meta)


def _from_multiscales(node, attrs: dict, ms: dict, path: Path):
    version = attrs.get("ome", {}).get("version") or ms.get("version")
    raw_axes = ms.get("axes")
    datasets = ms.get("datasets") or []
    if not datasets:
        raise SlideError(f"{path}: OME-Zarr 'multiscales' lists no datasets.")
    arrays = []
    for d in datasets:
        key = d.get("path")
        if key is None or key not in node:
            raise SlideError(f"{path}: OME-Zarr dataset {key!r} is listed but missing from the store.")
        arrays.append((key, node[key]))
    ndim = arrays[0][1].ndim
    if raw_axes is None:  # NGFF 0.1/0.2: always 5-D TCZYX
        axes = "TCZYX"[-ndim:] if ndim <= 5 else None
        units = {}
    else:
        names = [a["name"] if isinstance(a, dict) else str(a) for a in raw_axes]
        types = [a.get("type") if isinstance(a, dict) else None for a in raw_axes]
        axes = "".join(_axis_letter(n, t) for n, t in zip(names, types))
        units = {_axis_letter(n, t): (a.get("unit") if isinstance(a, dict) else None)
                 for n, t, a in zip(names, types, raw_axes)}
    if axes is None or len(axes) != ndim:
        raise SlideError(f"{path}: OME-Zarr axes {raw_axes!r} do not match the array's {ndim} dimensions.")
    mpp = _ngff_mpp(ms, datasets[0], axes, units.get("X"), path)
    meta = {"vendor": "ome-zarr", "ngff_version": version, "name": ms.get("name"), "axes": axes}
    return arrays, axes, mpp, meta


def _axis_letter(name: str, kind: str | None) -> str:
    name = name.lower()
    if name in ("x", "y", "z", "t", "c"):
        return name.upper()
    if kind == "channel":
        return "C"
    if kind == "time":
        return "T"
    return "Q"  # an axis we do not know: a stack unless it has length 1


def _scale_of(transforms) -> list[float] | None:
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            return [float(v) for v in t["scale"]]
    return None


def _ngff_mpp(ms: dict, dataset: dict, axes: str, unit: str | None, path: Path) -> float | None:
    scale = _scale_of(dataset.get("coordinateTransformations"))
    if scale is None or len(scale) != len(axes):
        return None
    value = scale[axes.index("X")]
    outer = _scale_of(ms.get("coordinateTransformations"))
    if outer is not None and len(outer) == len(axes):
        value *= outer[axes.index("X")]
    if unit is None:
        return None  # a scale without a unit says nothing about microns
    factor = _UNIT_UM.get(str(unit).lower())
    if factor is None:
        logger.warning("%s: x axis unit %r is not a length; pixel size unknown", path, unit)
        return None
    return value * factor if value > 0 else None


def _guess_axes(shape: tuple, path: Path) -> str:
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        if shape[2] in (3, 4) and shape[0] > 4:
            return "YXS"
        if shape[0] in (1, 2, 3, 4):
            return "CYX"
        if shape[2] in (1, 2):
            return "YXS"
    if len(shape) == 5:
        return "TCZYX"
    raise SlideLayoutError(
        f"{path}: a zarr array of shape {shape} is not an image (expected YX, YXC, CYX or TCZYX)."
    )
