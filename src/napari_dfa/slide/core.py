"""Whole-slide images as lazy pyramids: :func:`open_slide` and :class:`Slide` (no Qt, no napari).

>>> slide = open_slide("case.svs")            # reads metadata only, whatever the slide size
>>> slide.levels[0]                           # dask array, Y×X×3 uint8, level 0 first
>>> slide.mpp, slide.downsamples              # µm per level-0 pixel (or None), level-0 px per level px
>>> tile = slide.read_region(1, (0, 0, 512, 512))   # (y0, x0, h, w) in level-1 pixels

Formats and backends:

- ``tifffile`` (through tifffile's zarr store, zarr and dask): Aperio SVS, OME-TIFF with SubIFD
  pyramids, pyramidal TIFF with reduced-resolution pages, flat (Big)TIFF (levels built lazily by
  2×2 means), NDPI when OpenSlide is not installed;
- ``zarr``: OME-Zarr (NGFF 0.4 and 0.5, zarr v2 and v3) and plain zarr arrays;
- ``pillow``: PNG and JPEG (decoded whole on first use: those formats have no tiles);
- ``openslide`` (optional extra ``napari-dfa[openslide]``): MIRAX, Hamamatsu VMS/VMU/NDPI, Leica
  SCN, Ventana BIF, and anything OpenSlide reads when asked with ``backend="openslide"``;
- ``dicom`` (through OpenSlide): DICOM WSI, a ``.dcm`` file of the series or the folder holding it
  (see ``_dicom``).

Grey, 16-bit, float, planar, indexed-colour and RGBA data become RGB uint8 lazily (see
``_arrays`` for the intensity scaling). Every failure — at open or later, while dask computes
a tile — raises :class:`~napari_dfa.errors.SlideError` naming the file and the reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dask.array as da
import numpy as np

from ..arrays import compute_local
from ._arrays import OpenedSlide, SlideLayoutError
from .levels import nearest_level
from ..errors import SlideError

logger = logging.getLogger(__name__)

__all__ = ["Slide", "SlideLayoutError", "open_slide", "BACKENDS", "SUFFIXES"]

BACKENDS = ("auto", "tifffile", "openslide")
_TIFF = {".svs", ".tif", ".tiff", ".btf", ".tf8", ".tf2", ".ndpi"}
_PIL = {".png", ".jpg", ".jpeg"}
_ZARR = {".zarr"}
# Vendor formats tifffile cannot read (or reads worse): always OpenSlide under "auto".
_OPENSLIDE_ONLY = {".mrxs", ".vms", ".vmu", ".scn", ".bif", ".svslide"}
_DICOM = {".dcm"}  # read through OpenSlide too, under every backend but "tifffile"
SUFFIXES = _TIFF | _PIL | _ZARR | _OPENSLIDE_ONLY | _DICOM

_MAGIC = {
    b"II*\x00": "tiff", b"MM\x00*": "tiff", b"II+\x00": "tiff", b"MM\x00+": "tiff",
    b"\x89PNG": "pillow", b"\xff\xd8\xff": "pillow",
}


class Slide:
    """A lazy multiscale RGB whole-slide image.

    Arguments (keyword-only; use :func:`open_slide` rather than building one):
      path: the slide file or folder.
      levels: dask arrays ``Y×X×3 uint8``, level 0 (full resolution) first, each smaller.
      downsamples: level-0 pixels per level pixel for each level (``1.0`` for level 0).
      mpp: microns per level-0 pixel, or None when the file does not say.
      metadata: vendor metadata, e.g. ``{"vendor": "aperio", "aperio": {...}, ...}``.
      backend: ``"tifffile"``, ``"zarr"``, ``"pillow"``, ``"openslide"`` or ``"dicom"``.
      closer: called once by :meth:`close` to release file handles.
    """

    def __init__(self, *, path, levels: list[da.Array], downsamples: list[float], mpp: float | None,
                 metadata: dict, backend: str, closer=None):
        if not levels or len(levels) != len(downsamples):
            raise SlideError(f"{path}: no image levels found.")
        self.path = Path(path)
        self.levels = list(levels)
        self.downsamples = [float(d) for d in downsamples]
        self.mpp = None if mpp is None else float(mpp)
        self.metadata = dict(metadata)
        self.backend = backend
        self._closer = closer

    @property
    def shape(self) -> tuple[int, int]:
        """``(Y, X)`` of level 0."""
        return tuple(int(s) for s in self.levels[0].shape[:2])

    @property
    def level_count(self) -> int:
        return len(self.levels)

    def level_mpp(self, level: int) -> float | None:
        """Microns per pixel of ``level`` (None when the slide's pixel size is unknown)."""
        self._check_level(level)
        return None if self.mpp is None else self.mpp * self.downsamples[level]

    def best_level_for_mpp(self, mpp: float) -> int:
        """The level whose pixel size is closest to ``mpp`` (by ratio; ties go to the finer level).

        Without a known slide mpp there is nothing to compare: level 0, with a log message.
        """
        if self.mpp is None:
            logger.info("%s: pixel size unknown; using level 0 for %g µm/px", self.path, mpp)
            return 0
        if mpp is None or mpp <= 0:
            raise ValueError(f"mpp must be a positive number of µm per pixel, not {mpp!r}")
        return nearest_level([self.mpp * ds for ds in self.downsamples], mpp)

    def read_region(self, level: int, region: tuple[int, int, int, int]) -> np.ndarray:
        """Pixels of ``region = (y0, x0, h, w)`` in ``level`` pixels as ``h×w×3 uint8``.

        Parts outside the image come back white (glass), so tiles at the border have full size.
        """
        self._check_level(level)
        y0, x0, h, w = (int(v) for v in region)
        if h < 0 or w < 0:
            raise ValueError(f"region height and width must be ≥ 0, got {region!r}")
        arr = self.levels[level]
        H, W = arr.shape[:2]
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        ya, yb, xa, xb = max(y0, 0), min(y0 + h, H), max(x0, 0), min(x0 + w, W)
        if ya < yb and xa < xb:
            part = arr[ya:yb, xa:xb]
            # A tile-sized read is faster without the thread pool's hand-offs (~2x for 512² JPEG);
            # a large region decodes its chunks in parallel.
            part = compute_local(part, threads=part.npartitions > 4)
            out[ya - y0 : yb - y0, xa - x0 : xb - x0] = part
        return out

    def close(self) -> None:
        """Release file handles; the dask arrays must not be computed afterwards."""
        if self._closer is not None:
            closer, self._closer = self._closer, None
            closer()

    def __getstate__(self):
        # The levels pickle (their readers reopen the file); open handles do not.
        return {**self.__dict__, "_closer": None}

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = "unknown" if self.mpp is None else f"{self.mpp:g}"
        return (f"Slide({self.path.name!r}, {self.shape[1]}×{self.shape[0]} px, {len(self.levels)} levels, "
                f"mpp={mpp}, backend={self.backend!r})")

    def _check_level(self, level: int) -> None:
        if not 0 <= int(level) < len(self.levels):
            raise SlideError(f"{self.path}: level {level} does not exist (the slide has {len(self.levels)}).")


def open_slide(path, *, backend: str = "auto") -> Slide:
    """Open a whole-slide image lazily (metadata only; pixels are read when a level is computed).

    Arguments:
      path: a slide file (``.svs``, ``.tif``, ``.ome.tif``, ``.ndpi``, ``.mrxs``, ``.dcm``, ``.png``, ...),
        an OME-Zarr folder or a DICOM WSI folder.
      backend: ``"auto"`` (by format: see the module docstring), ``"tifffile"`` (tifffile, zarr and
        Pillow readers; never OpenSlide) or ``"openslide"``.

    Returns:
      a :class:`Slide`.

    Raises:
      SlideError: missing, unreadable, truncated, corrupt or unsupported file, naming it.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    path = Path(path).expanduser()
    if not path.exists():
        raise SlideError(f"{path}: no such file or folder.")
    if backend == "openslide":  # a DICOM folder still needs its file picked
        from ._dicom import is_dicom_file, is_dicom_folder

        kind = "dicom" if is_dicom_folder(path) or (path.is_file() and is_dicom_file(path)) else "openslide"
    else:
        kind = _sniff(path, allow_openslide=backend == "auto")
    opened: OpenedSlide
    if kind == "dicom":
        if backend == "tifffile":
            raise SlideError(f"{path}: DICOM slides are read through OpenSlide; open with backend='auto'.")
        from ._dicom import open_dicom

        opened = open_dicom(path)
    elif kind == "openslide":
        from ._openslide import open_openslide

        opened = open_openslide(path)
    elif kind == "tiff":
        from ._tiff import open_tiff

        opened = open_tiff(path)
    elif kind == "zarr":
        from ._zarr import open_zarr

        opened = open_zarr(path)
    else:
        from ._pil import open_pil

        opened = open_pil(path)
    slide = Slide(path=path, levels=opened.levels, downsamples=opened.downsamples, mpp=opened.mpp,
                  metadata=opened.metadata, backend="tifffile" if kind == "tiff" else kind,
                  closer=opened.close)
    logger.debug("opened %r", slide)
    return slide


def _sniff(path: Path, *, allow_openslide: bool) -> str:
    """Which reader to use: by folder layout, suffix, then the file's first bytes."""
    from ._dicom import is_dicom_folder

    suffix = path.suffix.lower()
    if path.is_dir():
        markers = ("zarr.json", ".zattrs", ".zgroup", ".zarray")
        if suffix in _ZARR or any((path / n).exists() for n in markers):
            return "zarr"
        if is_dicom_folder(path):
            return "dicom"
        raise SlideError(f"{path}: a folder that is not a zarr store (no zarr.json or .zattrs) nor a "
                         "DICOM WSI (no .dcm files).")
    if allow_openslide and suffix in _OPENSLIDE_ONLY:
        return "openslide"
    if allow_openslide and suffix == ".ndpi" and _openslide_available():
        return "openslide"
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise SlideError(f"{path}: cannot read the file ({exc}).") from exc
    if not head:
        raise SlideError(f"{path}: the file is empty.")
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    if head[128:132] == b"DICM":  # DICOM Part 10: a 128-byte preamble, then the marker
        return "dicom"
    if suffix in _OPENSLIDE_ONLY:
        raise SlideError(f"{path}: {suffix} slides need OpenSlide; open with backend='auto' or 'openslide'.")
    raise SlideError(
        f"{path}: not a supported slide (the first bytes {head[:4]!r} are not TIFF, PNG, JPEG or DICOM"
        f"{'' if suffix not in SUFFIXES else f', although it is named {suffix}'}). "
        "Supported: SVS, (OME-)TIFF, NDPI, OME-Zarr, DICOM WSI, PNG, JPEG, and OpenSlide formats."
    )


def _openslide_available() -> bool:
    try:
        import openslide  # noqa: F401
    except Exception:
        return False
    return True
