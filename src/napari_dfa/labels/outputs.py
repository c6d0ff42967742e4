"""Writing output files safely (no Qt): nothing is destroyed, nothing is left half-written.

- :func:`check_destination`: before any work, an output that exists needs ``overwrite``; a folder
  that is not one of our labels stores is never replaced (not even with ``overwrite``); a missing
  parent folder, a folder where a file should go, or the input itself is refused with a message
  naming the path.
- :func:`atomic_output`: the writer writes a hidden temporary file (or store folder) beside the
  destination, which replaces the destination only once it is complete; an error or Ctrl-C leaves
  the old output (if any) as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path

from ..errors import DataError
from .store import is_labels_store

logger = logging.getLogger(__name__)


def check_destination(dst, *, overwrite: bool = False, source=None, flag: str = "--overwrite") -> Path:
    """Refuse an output path that cannot or must not be written; returns it as a Path."""
    dst = Path(dst)
    if not dst.parent.is_dir():
        raise DataError(f"{dst}: the folder {dst.parent} does not exist; create it first or choose another path")
    if source is not None and dst.exists() and os.path.realpath(dst) == os.path.realpath(source):
        raise DataError(f"{dst}: this is the input itself; write to another path")
    is_store = dst.suffix.lower() == ".zarr"
    if dst.is_symlink() or dst.exists():
        if is_store and not is_labels_store(dst):
            what = "a file" if dst.is_file() else "a folder that is not a napari-dfa labels store"
            raise DataError(f"{dst}: exists and is {what}; napari-dfa never replaces it. "
                            "Choose another name, or move it away yourself")
        if not is_store and dst.is_dir():
            raise DataError(f"{dst}: a folder is in the way of this file; choose another name")
        if not overwrite:
            raise DataError(f"{dst}: exists; pass {flag} to replace it")
    return dst


@contextlib.contextmanager
def atomic_output(dst):
    """``with atomic_output(dst) as tmp: write(tmp)``: ``tmp`` (same folder, same suffix) becomes
    ``dst`` when the block ends without an error; otherwise it is removed and ``dst`` is untouched.

    A store folder replaces an existing store of ours by two renames (the old one is removed only
    after the new one is in place)."""
    dst = Path(dst)
    suffix = "".join(dst.suffixes[-1:])
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield tmp
        if tmp.is_dir():
            old = None
            if dst.exists():
                old = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.old")
                os.replace(dst, old)
            os.replace(tmp, dst)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
