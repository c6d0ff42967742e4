"""Labels outputs under the shared output policy (:mod:`napari_dfa.files.outputs`; no Qt).

- :func:`check_destination`: :func:`napari_dfa.files.outputs.check_output` with the labels rule on top:
  a ``.zarr`` that is not one of our labels stores is never replaced (not even with ``overwrite``).
- :func:`atomic_output`: the shared atomic writer (a hidden twin renamed into place when complete).
"""

from __future__ import annotations

from pathlib import Path

from ..files.outputs import atomic_output, check_output
from .store import is_labels_store

__all__ = ["atomic_output", "check_destination", "foreign_store"]


def foreign_store(dst) -> str | None:
    """Why an existing ``.zarr`` output is not ours to replace (None when it is, or not a .zarr)."""
    dst = Path(dst)
    if dst.suffix.lower() != ".zarr":
        return None
    if dst.is_symlink() or not is_labels_store(dst):
        return "a file" if dst.is_file() else "a folder that is not a napari-dfa labels store"
    return None


def check_destination(dst, *, overwrite: bool = False, source=None, flag: str = "--overwrite",
                      inputs=()) -> Path:
    """Refuse an output path that cannot or must not be written; returns it as a Path (``~``
    expanded). ``source`` (and ``inputs``, ``(name, path)`` pairs) are what the command reads."""
    ins = [*inputs, *([("the input", source)] if source is not None else [])]
    is_store = Path(dst).suffix.lower() == ".zarr"
    return check_output(dst, inputs=ins, overwrite=overwrite, flag=flag,
                        foreign=foreign_store if is_store else None)
