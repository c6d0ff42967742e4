"""OME-Zarr (NGFF 0.5, zarr v3) labels stores written chunk row by chunk row.

Layout of a store (``<name>.labels.zarr``)::

    zarr.json           attributes: ome.multiscales + ome.image-label (colours, class names),
                        napari_dfa (class list, level, region, progress for resume)
    0/                  labels at the working level, uint8, chunks chunk×chunk
    1/, 2/, ...         display pyramid (nearest, 2× per level), written once level 0 is done
    probabilities/      optional K×H×W float16, uncertainty/ H×W float16, focus/ K×H×W float16

Coordinates: with the slide's microns per pixel known, ``scale`` and ``translation`` are in
micrometres (axes unit ``micrometer``), as our slide reader places the image in napari; otherwise
in level-0 pixels (no unit). Either way ``napari_dfa`` keeps ``downsample`` and ``translate`` in
level-0 pixels and ``mpp`` (µm per level-0 pixel). The root is an NGFF label image (``image-label`` beside
``multiscales``), which ``ome_zarr.reader`` recognises as a labels node.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import zarr

from ..errors import ConfigError, DataError

logger = logging.getLogger(__name__)

NGFF_VERSION = "0.5"
ATTR = "napari_dfa"
PYRAMID_MIN_SIZE = 256  # stop the display pyramid once the longer side fits this


def ngff_attrs(*, level_shapes: list[tuple[int, int]], downsample: float, translate: tuple[float, float],
               class_names: list[str], class_colors: list[tuple[int, int, int]], name: str,
               mpp: float | None = None) -> dict:
    """The ``ome`` attribute block: multiscales over the stored levels and the image-label part."""
    unit = float(mpp) if mpp else 1.0
    datasets = []
    for k, _ in enumerate(level_shapes):
        s = float(downsample) * 2**k * unit
        datasets.append({
            "path": str(k),
            "coordinateTransformations": [
                {"type": "scale", "scale": [s, s]},
                {"type": "translation", "translation": [float(translate[0]) * unit, float(translate[1]) * unit]},
            ],
        })
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    if mpp:
        for axis in axes:
            axis["unit"] = "micrometer"

    colors = [{"label-value": 0, "rgba": [0, 0, 0, 0]}]
    colors += [{"label-value": i + 1, "rgba": [int(c) for c in rgb] + [255]} for i, rgb in enumerate(class_colors)]
    properties = [{"label-value": i + 1, "class": str(n)} for i, n in enumerate(class_names)]
    return {
        "version": NGFF_VERSION,
        "multiscales": [{
            "name": name,
            "axes": axes,
            "datasets": datasets,
            "type": "nearest",
        }],
        "image-label": {"version": NGFF_VERSION, "colors": colors, "properties": properties},
    }


def pyramid_shapes(shape: tuple[int, int], min_size: int = PYRAMID_MIN_SIZE) -> list[tuple[int, int]]:
    """Shapes of level 0 and its 2× nearest-downsampled levels down to ``min_size``."""
    shapes = [tuple(int(v) for v in shape)]
    while max(shapes[-1]) > min_size:
        h, w = shapes[-1]
        shapes.append((int(math.ceil(h / 2)), int(math.ceil(w / 2))))
    return shapes


class LabelsStore:
    """An OME-Zarr labels store being written (or resumed).

    Arguments:
      path: folder of the store.
      group: the open zarr group.
    """

    def __init__(self, *, path: Path, group: zarr.Group):
        self.path = path
        self.group = group

    # --- creation / opening ---------------------------------------------------------------------
    @classmethod
    def create(cls, path, *, shape: tuple[int, int], class_names, class_colors, chunk: int = 512,
               downsample: float = 1.0, translate=(0.0, 0.0), extras: dict[str, int] | None = None,
               info: dict | None = None) -> LabelsStore:
        """A new store (an existing one at ``path`` is replaced) with an all-zero level 0.

        ``extras`` maps optional output names to their channel count (0: a 2-D map) and ``info``
        is kept under ``napari_dfa`` (level, region, settings, mpp, ...)."""
        path = Path(path)
        try:
            group = zarr.open_group(str(path), mode="w", zarr_format=3)
        except Exception as exc:  # noqa: BLE001 - permissions, a file in the way, ...
            raise ConfigError(f"{path}: cannot create the labels store ({exc})") from exc
        h, w = (int(v) for v in shape)
        group.create_array("0", shape=(h, w), chunks=(min(chunk, h), min(chunk, w)), dtype="uint8",
                           fill_value=0, dimension_names=("y", "x"))
        for name, channels in (extras or {}).items():
            if channels:
                group.create_array(name, shape=(channels, h, w), chunks=(channels, min(chunk, h), min(chunk, w)),
                                   dtype="float16", fill_value=0, dimension_names=("c", "y", "x"))
            else:
                group.create_array(name, shape=(h, w), chunks=(min(chunk, h), min(chunk, w)),
                                   dtype="float16", fill_value=0, dimension_names=("y", "x"))
        names, colors = [str(n) for n in class_names], [tuple(int(v) for v in c) for c in class_colors]
        meta = dict(info or {})
        meta.update(class_names=names, class_colors=[list(c) for c in colors], downsample=float(downsample),
                    translate=[float(t) for t in translate], chunk=int(chunk), rows_done=0,
                    completed=False, extras=sorted((extras or {}).keys()))
        group.attrs.update({
            "ome": ngff_attrs(level_shapes=[(h, w)], downsample=downsample, translate=translate,
                              class_names=names, class_colors=colors, name=path.name, mpp=meta.get("mpp")),
            ATTR: meta,
        })
        return cls(path=path, group=group)

    @classmethod
    def open(cls, path, mode: str = "r+") -> LabelsStore:
        """An existing store written by napari-dfa; anything else is refused with a DataError."""
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: no such labels store")
        try:
            group = zarr.open_group(str(path), mode=mode)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{path}: not a zarr store ({exc})") from exc
        if ATTR not in group.attrs or "0" not in group:
            raise DataError(f"{path}: not a napari-dfa labels store (no '{ATTR}' attributes); "
                            "remove it or choose another output folder")
        return cls(path=path, group=group)

    # --- state ----------------------------------------------------------------------------------
    @property
    def info(self) -> dict:
        return dict(self.group.attrs[ATTR])

    @property
    def labels(self) -> zarr.Array:
        return self.group["0"]

    def extra(self, name: str) -> zarr.Array | None:
        return self.group[name] if name in self.group else None

    @property
    def rows_done(self) -> int:
        return int(self.info.get("rows_done", 0))

    @property
    def completed(self) -> bool:
        return bool(self.info.get("completed", False))

    def update_info(self, **values) -> None:
        meta = self.info
        meta.update(values)
        self.group.attrs.update({ATTR: meta})

    # --- writing --------------------------------------------------------------------------------
    def write_rows(self, y0: int, labels: np.ndarray, extras: dict[str, np.ndarray] | None = None) -> None:
        """Write full-width rows ``[y0, y0 + len(labels))`` of level 0 (and of the extras)."""
        y1 = y0 + labels.shape[0]
        self.labels[y0:y1, :] = labels
        for name, block in (extras or {}).items():
            arr = self.group[name]
            if arr.ndim == 3:
                arr[:, y0:y1, :] = block.astype(np.float16)
            else:
                arr[y0:y1, :] = block.astype(np.float16)

    def finish(self, *, min_size: int = PYRAMID_MIN_SIZE) -> None:
        """Build the display pyramid from level 0 (chunk rows at a time) and mark completed."""
        base = self.labels
        chunk = int(base.chunks[0])
        shapes = pyramid_shapes(base.shape, min_size)
        prev = base
        for k, (h, w) in enumerate(shapes[1:], start=1):
            arr = self.group.create_array(str(k), shape=(h, w), chunks=(min(chunk, h), min(chunk, w)),
                                          dtype="uint8", fill_value=0, dimension_names=("y", "x"),
                                          overwrite=True)
            # Nearest downsampling: level k pixel i is level k-1 pixel 2i. One output chunk row
            # reads two input chunk rows, so memory stays bounded by the width.
            for r0 in range(0, h, chunk):
                r1 = min(h, r0 + chunk)
                arr[r0:r1, :] = prev[2 * r0 : 2 * r1 : 2, ::2][:, :w]
            prev = arr
        meta = self.info
        ome = ngff_attrs(level_shapes=shapes, downsample=meta["downsample"], translate=meta["translate"],
                         class_names=meta["class_names"], class_colors=meta["class_colors"], name=self.path.name,
                         mpp=meta.get("mpp"))
        meta.update(completed=True, rows_done=int(base.shape[0]))
        self.group.attrs.update({"ome": ome, ATTR: meta})

    def levels(self) -> list[zarr.Array]:
        """The stored levels listed in the multiscales metadata."""
        datasets = self.group.attrs["ome"]["multiscales"][0]["datasets"]
        return [self.group[d["path"]] for d in datasets]


