"""OME-Zarr (NGFF 0.5, zarr v3) labels stores written chunk row by chunk row.

Layout of a store (``<name>.labels.zarr``)::

    zarr.json           attributes: ome.multiscales + ome.image-label (colours, class names),
                        napari_dfa (class list, level, region, progress for resume)
    0/                  labels at the working level, uint8, chunks chunk×chunk
    1/, 2/, ...         display pyramid (nearest subsampling), written once level 0 is done: as many
                        levels as the slide, spaced as the slide's are, when the slide is known;
                        else 2× per level down to 256 px
    probabilities/      optional K×H×W float16, uncertainty/ H×W float16, focus/ K×H×W float16

Coordinates: with the slide's microns per pixel known, ``scale`` and ``translation`` are in
micrometres (axes unit ``micrometer``), as our slide reader places the image in napari; otherwise
in level-0 pixels (no unit). Either way ``napari_dfa`` keeps ``downsample`` and ``translate`` in
level-0 pixels and ``mpp`` (µm per level-0 pixel). The root is an NGFF label image (``image-label`` beside
``multiscales``), which ``ome_zarr.reader`` recognises as a labels node; it passes the
``ome-zarr-models`` validator and the NGFF strict label and image schemas (``colors`` and
``properties`` name the same label values, 1..K; ``multiscales[0]`` has ``name``, ``type`` and
``metadata``). The NGFF metadata itself is :mod:`napari_dfa.labels.ngff_meta`, the levels'
geometry :mod:`napari_dfa.labels.pyramid`, one writer at a time :mod:`napari_dfa.labels.lock`.

Inside an OME-Zarr slide (``<slide>/labels/<name>``,
:func:`~napari_dfa.labels.ngff_meta.image_labels_path`; ``napari-dfa predict --into-image``) the store
is one of the slide's labels: listed in ``<slide>/labels`` (``"labels": [...]``), ``image-label.source``
``../../``, the slide's zarr format and NGFF version (0.4 on zarr v2 too), and coordinates in the
slide's own frame (its dataset-0 scale, translation and unit), so that ome_zarr and napari-ome-zarr
overlay the labels on the image they open.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import zarr

from ..errors import ConfigError, DataError
from ._common import ATTR
from .ngff_meta import (NGFF_VERSION, image_frame, multiscale_datasets, multiscale_levels, ome_for, parent_image,
                        register_label, write_ome)
from .pyramid import PYRAMID_MIN_SIZE, pyramid_factors

logger = logging.getLogger(__name__)


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
        """A new store (an existing napari-dfa store at ``path`` is replaced; anything else there
        is refused, see :func:`refuse_foreign`) with an all-zero level 0.

        ``extras`` maps optional output names to their channel count (0: a 2-D map) and ``info``
        is kept under ``napari_dfa`` (level, region, settings, mpp, ``image_downsamples``: the
        slide's pyramid, which the label levels then match, ...).

        A ``path`` of the form ``<image>/labels/<name>`` inside an OME-Zarr image (see
        :func:`~napari_dfa.labels.ngff_meta.image_labels_path`) becomes one of that image's labels:
        same zarr format and NGFF version as the image, coordinates in the image's own frame,
        ``source`` pointing back to it, listed in ``labels/`` so that OME-Zarr readers find it
        beside the image."""
        path = Path(path)
        refuse_foreign(path)  # replacing is for our own stores only: never empty someone's folder
        meta = dict(info or {})
        image = parent_image(path)
        zarr_format, version = 3, NGFF_VERSION
        if image is not None:
            frame = image_frame(image)
            zarr_format, version = frame.pop("zarr_format"), frame.pop("version")
            # the image's stored datasets (a reader may add levels of its own to the slide)
            meta["image_downsamples"] = frame.pop("downsamples")
            meta["frame"] = {"scale": list(frame["scale"]), "translation": list(frame["translation"]),
                             "unit": frame["unit"]}
        meta.update(zarr_format=zarr_format, ngff_version=version)
        try:
            if image is not None:
                register_label(path.parent, path.name, zarr_format, version)
            group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
        except Exception as exc:  # noqa: BLE001 - permissions, a file in the way, ...
            raise ConfigError(f"{path}: cannot create the labels store ({exc})") from exc
        h, w = (int(v) for v in shape)

        def dims(*names):  # dimension names exist in zarr v3 only
            return {"dimension_names": names} if zarr_format == 3 else {}

        group.create_array("0", shape=(h, w), chunks=(min(chunk, h), min(chunk, w)), dtype="uint8",
                           fill_value=0, **dims("y", "x"))
        for name, channels in (extras or {}).items():
            if channels:
                group.create_array(name, shape=(channels, h, w), chunks=(channels, min(chunk, h), min(chunk, w)),
                                   dtype="float16", fill_value=0, **dims("c", "y", "x"))
            else:
                group.create_array(name, shape=(h, w), chunks=(min(chunk, h), min(chunk, w)),
                                   dtype="float16", fill_value=0, **dims("y", "x"))
        names, colors = [str(n) for n in class_names], [tuple(int(v) for v in c) for c in class_colors]
        meta.update(class_names=names, class_colors=[list(c) for c in colors], downsample=float(downsample),
                    translate=[float(t) for t in translate], chunk=int(chunk), rows_done=0,
                    completed=False, extras=sorted((extras or {}).keys()))
        write_ome(group, ome_for(meta, [(h, w)], [1], path.name), zarr_format)
        group.attrs.update({ATTR: meta})
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
        """Build the display pyramid from level 0 (chunk rows at a time) and mark completed.

        As many levels as the image when its pyramid is known (``image_downsamples``), else 2×
        steps down to ``min_size``; nearest subsampling (a label is never averaged)."""
        base = self.labels
        chunk = int(base.chunks[0])
        meta = self.info
        factors = pyramid_factors(base.shape, meta.get("image_downsamples"), min_size)
        h0, w0 = base.shape
        shapes = [(int(math.ceil(h0 / f)), int(math.ceil(w0 / f))) for f in factors]
        dims = {"dimension_names": ("y", "x")} if int(meta.get("zarr_format", 3)) == 3 else {}
        made = [base]
        for k in range(1, len(factors)):
            h, w = shapes[k]
            # Subsample the finest level already made whose factor divides this one (level 0 always does).
            j = max(i for i in range(k) if factors[k] % factors[i] == 0)
            src, step = made[j], factors[k] // factors[j]
            arr = self.group.create_array(str(k), shape=(h, w), chunks=(min(chunk, h), min(chunk, w)),
                                          dtype="uint8", fill_value=0, overwrite=True, **dims)
            # Nearest: level k pixel i is source pixel step·i. Blocks of chunk rows × 4 chunks of
            # columns keep memory bounded whatever the width and the step.
            cols = 4 * chunk
            for r0 in range(0, h, chunk):
                r1 = min(h, r0 + chunk)
                for c0 in range(0, w, cols):
                    c1 = min(w, c0 + cols)
                    arr[r0:r1, c0:c1] = src[step * r0 : step * r1 : step, step * c0 : step * c1 : step]
            made.append(arr)
        meta.update(completed=True, rows_done=int(base.shape[0]))
        write_ome(self.group, ome_for(meta, shapes, factors, self.path.name), int(meta.get("zarr_format", 3)))
        self.group.attrs.update({ATTR: meta})

    def copy_to(self, path, **info) -> LabelsStore:
        """A copy of this store at ``path`` (replacing a napari-dfa store there), with ``info``
        merged into its ``napari_dfa`` attributes. Written beside ``path`` and renamed into place:
        an interrupted copy never looks like a store. This store is not touched."""
        import os
        import shutil

        dst = Path(path)
        refuse_foreign(dst)
        tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            shutil.copytree(self.path, tmp)
            copy = LabelsStore.open(tmp, mode="r+")
            if info:
                meta = copy.info
                meta.update(info)
                if "class_names" in info or "class_colors" in info:  # the OME colours and names too
                    shapes = [tuple(a.shape) for a in copy.levels()]
                    write_ome(copy.group, ome_for(meta, shapes, copy.level_factors(), dst.name),
                               int(meta.get("zarr_format", 3)))
                copy.group.attrs.update({ATTR: meta})
            if dst.exists():
                shutil.rmtree(dst)
            os.replace(tmp, dst)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"{dst}: cannot copy the labels store {self.path} there ({exc})") from None
        return LabelsStore.open(dst, mode="r+")

    def levels(self) -> list[zarr.Array]:
        """The stored levels listed in the multiscales metadata, level 0 first."""
        return multiscale_levels(self.group)

    def level_factors(self) -> list[int]:
        """Level-0 pixels per pixel of each stored level (level k pixel i is level-0 pixel f·i):
        the ratio of the levels' NGFF scales, or of their heights when a level has no scale."""
        levels = self.levels()
        scales = []
        for d in multiscale_datasets(self.group):
            s = [t["scale"][-1] for t in d.get("coordinateTransformations", []) if t.get("type") == "scale"]
            scales.append(float(s[0]) if s else None)
        if len(scales) == len(levels) and all(scales) and scales[0] > 0:
            return [max(1, int(round(s / scales[0]))) for s in scales]
        return [max(1, int(round(levels[0].shape[0] / a.shape[0]))) for a in levels]

    def write_patch(self, offset: tuple[int, int], labels: np.ndarray) -> None:
        """Write ``labels`` at ``offset`` (y, x; level-0 pixels of the store) into every level.

        Level k is level 0 subsampled by its factor (nearest, as :meth:`finish` builds it), so a
        patch corrected after the pyramid was built shows at every zoom. Open the store with
        mode ``"r+"``."""
        levels = self.levels()
        y0, x0 = (int(v) for v in offset)
        for arr, f in zip(levels, self.level_factors()):
            # the level-0 rows/columns this level samples: multiples of f
            sub = labels[(-y0) % f::f, (-x0) % f::f]
            ys, xs = -(-y0 // f), -(-x0 // f)
            sub = sub[: arr.shape[0] - ys, : arr.shape[1] - xs]
            arr[ys:ys + sub.shape[0], xs:xs + sub.shape[1]] = sub
        logger.info("%s: wrote a %s patch at %s into %d levels", self.path, labels.shape, offset, len(levels))


# --- completeness and writers -------------------------------------------------------------------
# Every store carries ``napari_dfa.completed`` (False until finish() ran) and ``rows_done``; every
# reader and exporter honours it (napari_dfa.labels.io.read_labels reports it, export refuses an
# incomplete store unless asked for a partial copy, which is then marked ``partial``).


def completeness(info: dict, rows_total: int) -> dict:
    """``{"completed", "rows_done", "rows_total", "fraction", "partial"}`` of a store's attributes."""
    completed = bool(info.get("completed", False))
    rows_done = int(info.get("rows_done", rows_total if completed else 0))
    rows_done = max(0, min(rows_done, int(rows_total)))
    return {"completed": completed, "rows_done": rows_done, "rows_total": int(rows_total),
            "fraction": rows_done / rows_total if rows_total else 1.0, "partial": bool(info.get("partial", False))}


def is_labels_store(path) -> bool:
    """Whether ``path`` is a labels store napari-dfa wrote (its ``napari_dfa`` attributes)."""
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        return ATTR in zarr.open_group(str(path), mode="r").attrs
    except Exception:  # noqa: BLE001 - not a zarr group at all
        return False


def refuse_foreign(path) -> None:
    """DataError when ``path`` exists and is not one of our labels stores: a folder (or file) that
    napari-dfa did not write is never emptied or replaced, whatever the flags."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not is_labels_store(path)):
        what = "a file" if path.is_file() else "a folder that is not a napari-dfa labels store"
        raise DataError(f"{path}: exists and is {what}; napari-dfa never replaces it. "
                        "Choose another name, or move it away yourself")
