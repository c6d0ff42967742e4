"""A result's caveat kept with its labels files (no Qt).

When the domain check finds a slide beyond the model (:attr:`napari_dfa.model.domain.DomainReport.caveat`:
"Caution: this slide's stain looks unlike the model's training data ..."), every export of that
result says so. GeoJSON and the areas CSV take it when written (``caveat=``); a labels store and
a labels TIFF get it afterwards with :func:`add_caveat`, under ``napari_dfa.caveat`` of the
store's attributes / the TIFF's JSON description, where :func:`read_caveat` (and so
``napari-dfa export``) finds it again.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._common import ATTR


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff") and path.is_file()


def add_caveat(path, caveat: str) -> Path:
    """Keep ``caveat`` with the labels store (.zarr) or labels TIFF at ``path``."""
    path = Path(path)
    if _is_tiff(path):
        import tifffile

        desc = json.loads(tifffile.tiffcomment(path) or "{}")
        desc.setdefault(ATTR, {})["caveat"] = str(caveat)
        tifffile.tiffcomment(path, json.dumps(desc))
    else:
        from .store import LabelsStore

        LabelsStore.open(path).update_info(caveat=str(caveat))
    return path


def read_caveat(path) -> str | None:
    """The caveat kept with a labels store or TIFF, or None (none kept, or not ours)."""
    path = Path(path)
    try:
        if _is_tiff(path):
            import tifffile

            meta = json.loads(tifffile.tiffcomment(path) or "{}").get(ATTR, {})
        else:
            import zarr

            meta = dict(zarr.open_group(str(path), mode="r").attrs.get(ATTR, {}) or {})
    except Exception:  # noqa: BLE001 - not ours, or unreadable: the readers say so themselves
        return None
    caveat = meta.get("caveat") if isinstance(meta, dict) else None
    return str(caveat) if caveat else None
