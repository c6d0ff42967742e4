"""The tifffile backend: Aperio SVS, OME-TIFF (SubIFD pyramids), pyramidal and flat (Big)TIFF, NDPI.

Opening parses the IFDs only (tifffile's ``TiffFile``); each stored level becomes a dask array over
``zarr.open(series.aszarr(...))`` — or over a memory map for a flat uncompressed image, whose
single strip would otherwise be one multi-GB zarr chunk. A flat image gets its lower levels from
2×2 means, computed lazily.

A file whose tiles point past its end (a copy cut short) is refused at open time; damage that only
shows when a tile is decoded (corrupt bytes) raises :class:`SlideError` from inside the dask
compute (see :class:`GuardedArray`).
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import tifffile
import zarr

from ._arrays import (
    GuardedArray,
    OpenedSlide,
    chunk_edge,
    lazy_level,
    rgb_pyramid,
    to_channels_last,
)
from ..errors import SlideError

logger = logging.getLogger(__name__)

_ASSOCIATED = {"thumbnail", "label", "macro", "overview"}
# µm per unit of an OME length unit
_UNIT_UM = {"µm": 1.0, "um": 1.0, "micrometer": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3,
            "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6}
# A pixel size outside this range (µm) is a placeholder (72 dpi, 1 px/cm), not a microscope's.
MPP_PLAUSIBLE = (0.01, 100.0)


class _TiffLevel:
    """Opens one stored level; picklable (reopens the file in another process)."""

    def __init__(self, path: Path, series: int, level: int, memmap: bool, array=None):
        self.path, self.series, self.level, self.memmap = path, series, level, memmap
        self._array = array

    def __call__(self):
        if self._array is None:
            if self.memmap:
                self._array = tifffile.memmap(self.path, series=self.series, level=self.level, mode="r")
            else:
                store = tifffile.imread(self.path, aszarr=True, series=self.series, level=self.level)
                self._array = zarr.open(store, mode="r")
        return self._array

    def __getstate__(self):
        return {**self.__dict__, "_array": None}


def open_tiff(path: Path) -> OpenedSlide:
    """Open the main image series of a TIFF-based slide; raises SlideError naming the file."""
    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise SlideError(
            f"{path}: not a readable TIFF ({type(exc).__name__}: {exc}). The file is not an image, "
            "or its header is damaged."
        ) from exc
    try:
        return _open(tif, Path(path))
    except SlideError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise SlideError(f"{path}: cannot open the TIFF ({type(exc).__name__}: {exc}).") from exc


def _is_associated(name: str | None) -> bool:
    """Label, macro, thumbnail and overview images (``"macro image"`` in Bio-Formats' OME-TIFFs)."""
    return bool(set(re.findall(r"[a-z]+", (name or "").lower())) & _ASSOCIATED)


def _main_series(tif: tifffile.TiffFile, path: Path) -> int:
    """The largest series that is not an associated image (the first one on a tie)."""
    best, best_area = None, -1
    for i, s in enumerate(tif.series):
        if _is_associated(s.name) or not s.shape or len(s.shape) < 2:
            continue
        try:
            area = int(np.prod([n for ax, n in zip(s.axes, s.shape) if ax in "YX"]))
        except Exception:
            continue
        if area > best_area:
            best, best_area = i, area
    if best is None:
        raise SlideError(
            f"{path}: the TIFF holds no image series (only {len(tif.series)} associated images)."
        )
    return best


def _check_not_truncated(tif: tifffile.TiffFile, series, path: Path) -> None:
    """Refuse a file whose strips/tiles point past its end (found cheaply from the IFDs)."""
    size = tif.filehandle.size
    for li, level in enumerate(series.levels):
        for page in level.pages:
            if page is None:
                continue
            offsets, counts = np.asarray(page.dataoffsets), np.asarray(page.databytecounts)
            if offsets.size and int((offsets + counts).max()) > size:
                raise SlideError(
                    f"{path}: truncated — level {li} needs {int((offsets + counts).max())} bytes, "
                    f"the file has {size}. Copy or export it again."
                )


def _open(tif: tifffile.TiffFile, path: Path) -> OpenedSlide:
    si = _main_series(tif, path)
    series = tif.series[si]
    _check_not_truncated(tif, series, path)
    # One store for the whole pyramid: a zarr Group "0", "1", ... (a plain Array for one level).
    root = zarr.open(series.aszarr(multiscales=True), mode="r")
    stored, notes = [], []
    for li, level in enumerate(series.levels):
        zarr_level = root[str(li)] if isinstance(root, zarr.Group) else root
        page = level.keyframe
        memmap = len(level.pages) == 1 and not page.is_tiled and page.is_memmappable
        opener = _TiffLevel(path, si, li, memmap)
        if not memmap:
            opener._array = zarr_level  # reuse the open store in this process
        shape = tuple(level.shape)
        if memmap:
            chunks = tuple(1024 if ax in "YX" else n for ax, n in zip(level.axes, shape))
        else:
            zchunks = zarr_level.chunks
            chunks = tuple(
                min(chunk_edge(c), 4096, n) if ax in "YX" else c
                for ax, c, n in zip(level.axes, zchunks, shape)
            )
        guarded = GuardedArray(path=path, shape=shape, dtype=level.dtype, open_level=opener,
                               what=f"level {li}")
        arr, axes = lazy_level(guarded, chunks), level.axes
        if page.photometric == tifffile.PHOTOMETRIC.PALETTE and page.colormap is not None:
            arr, axes = _apply_palette(arr, axes, page.colormap)
        # ExtraSamples 1/2: associated/unassociated alpha; 0 (unspecified) is just another channel.
        alpha = any(int(e) in (1, 2) for e in (page.extrasamples or ()))
        stored.append(to_channels_last(arr, axes, path=path, alpha=alpha, notes=notes if li == 0 else None))
    levels, downsamples = rgb_pyramid(stored, path=path)
    mpp, metadata = _metadata(tif, series, path)
    metadata["stored_levels"] = len(series.levels)
    if notes:  # what was read of a Z-stack / T-series (see to_channels_last)
        metadata["planes"] = notes
    metadata["associated_images"] = [s.name.lower() for s in tif.series if _is_associated(s.name)]
    return OpenedSlide(levels=levels, downsamples=downsamples, mpp=mpp, metadata=metadata, close=tif.close)


def _apply_palette(arr, axes: str, colormap: np.ndarray):
    """Indexed colour (PhotometricInterpretation 3) -> RGB through the TIFF ColorMap, lazily."""
    cmap = np.asarray(colormap)
    lut = np.rint(cmap.T / 257.0).astype(np.uint8) if cmap.max() > 255 else cmap.T.astype(np.uint8)

    def look_up(block):
        return lut[np.clip(block, 0, len(lut) - 1)]

    rgb = arr.map_blocks(look_up, dtype=np.uint8, new_axis=arr.ndim, chunks=arr.chunks + ((3,),),
                         meta=np.empty((0,) * (arr.ndim + 1), dtype=np.uint8))
    return rgb, axes + "S"


# --- metadata ---------------------------------------------------------------------------------


def _metadata(tif: tifffile.TiffFile, series, path: Path) -> tuple[float | None, dict]:
    page = series.levels[0].keyframe
    meta: dict = {"format": "tiff", "bigtiff": bool(tif.is_bigtiff), "compression": page.compression.name}
    mpp = None
    if tif.is_svs:
        meta["vendor"] = "aperio"
        aperio = parse_aperio_description(page.description)
        meta["aperio"] = aperio
        if "AppMag" in aperio:
            meta["objective_power"] = _float(aperio["AppMag"])
        mpp = _plausible(_float(aperio.get("MPP")), path, "Aperio MPP")
    elif tif.is_ome:
        meta["vendor"] = "ome"
        mpp = _ome_mpp(tif.ome_metadata, path)
    else:
        meta["vendor"] = "ndpi" if tif.is_ndpi else "generic-tiff"
    if mpp is None:
        mpp = _resolution_mpp(page, path)
    return mpp, meta


def parse_aperio_description(description: str) -> dict:
    """``"Aperio Image Library ...|AppMag = 20|MPP = 0.499"`` -> ``{"AppMag": "20", "MPP": "0.499"}``."""
    out = {}
    parts = description.split("|")
    out["header"] = parts[0].strip()
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _ome_mpp(xml: str | None, path: Path) -> float | None:
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        logger.warning("%s: unreadable OME-XML (%s); pixel size unknown", path, exc)
        return None
    for el in root.iter():
        if el.tag.endswith("}Pixels") or el.tag == "Pixels":
            size = _float(el.get("PhysicalSizeX"))
            unit = el.get("PhysicalSizeXUnit", "µm")
            if size is None:
                return None
            if unit not in _UNIT_UM:
                logger.warning("%s: OME PhysicalSizeXUnit %r is no length; pixel size unknown", path, unit)
                return None
            return _plausible(size * _UNIT_UM[unit], path, "OME PhysicalSizeX")
    return None


def _resolution_mpp(page, path: Path) -> float | None:
    """µm/px from XResolution + ResolutionUnit (inch or cm); None for placeholders (72 dpi...)."""
    try:
        xres = float(page.resolution[0])
        unit = int(page.resolutionunit)
    except Exception:
        return None
    if xres <= 0:
        return None
    per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # µm per inch / per cm
    if per_unit is None:
        return None
    mpp = per_unit / xres
    lo, hi = MPP_PLAUSIBLE
    return mpp if lo <= mpp <= hi else None


def _plausible(mpp: float | None, path: Path, what: str) -> float | None:
    if mpp is None:
        return None
    lo, hi = MPP_PLAUSIBLE
    if not lo <= mpp <= hi:
        logger.warning("%s: %s = %g µm/px is implausible; pixel size unknown", path, what, mpp)
        return None
    return mpp


def _float(value) -> float | None:
    if value is None:
        return None
    m = re.match(r"\s*([-+0-9.eE]+)", str(value))
    try:
        return float(m.group(1)) if m else None
    except ValueError:
        return None
