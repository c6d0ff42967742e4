"""Per-class areas of a label image (no Qt): pixels, µm², percentages, and the CSV pathologists read."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..classes import ClassSet
from ._common import row_blocks

# --- areas ----------------------------------------------------------------------------------------
def class_areas(labels, classes, *, downsample: float = 1.0, mpp: float | None = None) -> list[dict]:
    """Per-class area and share of the labelled (non-zero) area.

    Returns one dict per class: ``class``, ``label``, ``pixels`` (at the labels' level),
    ``area_px0`` (level-0 pixels), ``area_mm2`` (when ``mpp`` is known, else None), ``percent``."""
    counts = np.zeros(256, dtype=np.int64)
    for _, block in row_blocks(labels):
        counts += np.bincount(block.ravel(), minlength=256)[:256]
    names = list(ClassSet.of(classes).names)
    labelled = int(counts[1 : len(names) + 1].sum())
    rows = []
    for i, name in enumerate(names, start=1):
        px = int(counts[i])
        area0 = px * float(downsample) ** 2
        rows.append({
            "class": name, "label": i, "pixels": px, "area_px0": area0,
            "area_mm2": None if mpp is None else area0 * (mpp * 1e-3) ** 2,
            "percent": 100.0 * px / labelled if labelled else 0.0,
        })
    return rows


def write_area_csv(path, labels, classes, *, downsample: float = 1.0, mpp: float | None = None,
                   caveat: str | None = None) -> Path:
    """Write :func:`class_areas` as CSV (e.g. a tumour–stroma ratio is two rows of it).

    ``caveat`` (e.g. the slide lies outside the model's training data) adds a ``caveat`` column
    holding it on every row: a comment line would break CSV readers, and a row copied alone into
    a spreadsheet keeps its warning."""
    path = Path(path)
    rows = class_areas(labels, classes, downsample=downsample, mpp=mpp)
    fields = ["class", "label", "pixels", "area_px0", "area_mm2", "percent"] + (["caveat"] if caveat else [])
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "area_mm2": "" if r["area_mm2"] is None else f"{r['area_mm2']:.6g}",
                             "percent": f"{r['percent']:.4f}", **({"caveat": caveat} if caveat else {})})
    return path


