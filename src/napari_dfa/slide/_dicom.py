"""DICOM whole-slide images (VL Whole Slide Microscopy, one series of ``.dcm`` files) through OpenSlide.

A DICOM WSI is a series: one file per pyramid level (plus label, overview, thumbnail), all in one
folder. OpenSlide (4.0 and later) reads the whole series from any one of its files and gives the
pyramid and the pixel spacing (``openslide.mpp-x``), so this module only finds that file:

- a ``.dcm`` file (or any file with the DICOM ``DICM`` marker): that file; its siblings in the same
  folder complete the pyramid;
- a folder: its largest DICOM file, the full-resolution level of the series in it.

OpenSlide is the optional extra ``napari-dfa[openslide]``; without it the error says how to install
it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ._arrays import OpenedSlide
from ..errors import SlideError

logger = logging.getLogger(__name__)

SUFFIX = ".dcm"
_MAGIC_OFFSET = 128  # a 128-byte preamble, then b"DICM"


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` is a file with the DICOM Part 10 marker (whatever its name)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return head[_MAGIC_OFFSET:] == b"DICM"


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files directly in ``folder`` (``*.dcm``, or any file with the marker), largest first."""
    try:
        entries = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    except OSError:
        return []
    found = [p for p in entries if p.suffix.lower() == SUFFIX or is_dicom_file(p)]
    return sorted(found, key=lambda p: (-p.stat().st_size, p.name))


def is_dicom_folder(path: Path) -> bool:
    """A folder holding ``.dcm`` files (checked by name only: cheap enough for napari's reader probe)."""
    try:
        return path.is_dir() and any(p.suffix.lower() == SUFFIX for p in path.iterdir())
    except OSError:
        return False


def open_dicom(path: Path) -> OpenedSlide:
    """Open a DICOM WSI file or folder through OpenSlide; SlideError naming ``path`` otherwise."""
    from ._openslide import open_openslide

    path = Path(path)
    if path.is_dir():
        files = dicom_files(path)
        if not files:
            raise SlideError(f"{path}: a folder without DICOM files (.dcm); give a DICOM WSI folder or file.")
        target = files[0]
    else:
        target = path
    logger.debug("DICOM WSI %s: opening the series through %s", path, target.name)
    opened = open_openslide(target)
    if opened.metadata.get("vendor") != "dicom":
        # OpenSlide read it, but as something else: not a DICOM WSI series
        opened.close()
        raise SlideError(f"{path}: not a DICOM whole-slide image (OpenSlide reads it as "
                         f"{opened.metadata.get('vendor')!r}).")
    opened.metadata.update(format="dicom", dicom_file=str(target))
    return opened
