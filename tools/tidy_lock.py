"""Tidy the pip-compile output into the lock that `make demo` and `make test` install with.

Two edits, both so that the lock works as a pip constraints file on any Linux x86-64 Python 3.11:
- the package itself (``napari-dfa @ file:///…``, from the extras that name it) is dropped: a
  constraint on a local path would pin every clone to the clone that wrote the lock;
- local version labels (``torch==2.13.0+cpu``) become the public version, so the same line accepts
  the CPU wheel found on disk here and the CUDA build of 2.13.0 a GPU machine installs first.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def tidy(text: str) -> str:
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if line.startswith("napari-dfa @ ") or line.startswith("napari-dfa=="):
            skipping = True  # drop the line and its "# via" comments
            continue
        if skipping and line.startswith("    #"):
            continue
        skipping = False
        out.append(re.sub(r"^([A-Za-z0-9_.\-]+==[^+\s]+)\+\S+", r"\1", line))
    return "\n".join(out) + "\n"


def main(path: str) -> None:
    p = Path(path)
    p.write_text(tidy(p.read_text()))


if __name__ == "__main__":
    main(sys.argv[1])
