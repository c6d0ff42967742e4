"""The on-disk store of a pathologist's label corrections (no Qt).

A correction is a patch of labels over a rectangular region of one slide pyramid level; ``0`` means
"not corrected" (the ignore label), ``1..K`` the class the pathologist painted. Patches live in one
zarr group per slide, written block by block as the brush moves, so a process that is killed right
after a stroke loses nothing: the next session reopens the store by the slide's path.

Layout of a store (``<root>/<slide stem>-<hash of the slide path>.zarr``)::

    attrs: {"slide_path": ..., "class_names": [...], "format": "napari-dfa-corrections/1"}
    patches/<key>          uint8 h×w, chunks 256×256, fill 0
        attrs: {"level": int, "region": [y0, x0, h, w], "downsample": float, "source": str}

QuPath GeoJSON of class-annotated polygons (level-0 pixel coordinates, exactly what QuPath exports)
is rasterised onto the slide grid at a chosen level by :meth:`CorrectionStore.import_geojson`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from ..errors import DataError
from ..paths import corrections_store_path
from .geojson import rasterise_polygons, read_geojson_polygons

logger = logging.getLogger(__name__)

FORMAT = "napari-dfa-corrections/1"
CHUNK = 256




@dataclass(frozen=True)
class CorrectionPatch:
    """One corrected region: labels at ``level`` over ``region`` = (y0, x0, h, w) in level pixels."""

    key: str
    level: int
    region: tuple[int, int, int, int]
    downsample: float
    source: str = "paint"

    @property
    def translate(self) -> tuple[float, float]:
        """Top-left of the patch in level-0 pixels."""
        return (self.region[0] * self.downsample, self.region[1] * self.downsample)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.region[2], self.region[3])


class CorrectionStore:
    """A zarr-backed, write-through store of correction patches for one slide.

    Arguments:
      path: the ``.zarr`` folder; created when missing (unless ``create=False``).
      slide_path: the slide the corrections belong to (recorded in the store).
      class_names: the K class names of labels 1..K; painted values above K are refused.
      create: when False, a missing store raises :class:`DataError` instead of being created.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        slide_path: str | os.PathLike | None = None,
        class_names: Iterable[str] | None = None,
        create: bool = True,
    ):
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise DataError(f"{self.path}: no correction store here")
        try:
            self._group = zarr.open_group(str(self.path), mode="a")
        except Exception as exc:  # zarr raises many types for a damaged folder
            raise DataError(f"{self.path}: cannot open the correction store ({exc}); "
                            "move the folder away to start afresh") from exc
        attrs = self._group.attrs.asdict()
        if attrs and attrs.get("format") not in (None, FORMAT):
            raise DataError(f"{self.path}: not a napari-dfa correction store (format {attrs.get('format')!r})")
        update = {"format": FORMAT}
        if slide_path is not None and "slide_path" not in attrs:
            update["slide_path"] = str(slide_path)
        if class_names is not None:
            update["class_names"] = list(class_names)
        self._group.attrs.update(update)
        self._patches = self._group.require_group("patches")

    @classmethod
    def for_slide(
        cls,
        slide_path: str | os.PathLike,
        *,
        root: str | os.PathLike | None = None,
        class_names: Iterable[str] | None = None,
        create: bool = True,
    ) -> CorrectionStore:
        """Open (or create) the store of ``slide_path`` under ``root`` (default: the cache folder)."""
        path = corrections_store_path(slide_path, root=root)
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(path, slide_path=slide_path, class_names=class_names, create=create)

    # --- metadata ---------------------------------------------------------------------------
    @property
    def slide_path(self) -> str | None:
        return self._group.attrs.get("slide_path")

    @property
    def class_names(self) -> list[str]:
        return list(self._group.attrs.get("class_names") or [])

    def patches(self) -> list[CorrectionPatch]:
        """Every patch in the store, oldest first."""
        out = []
        for key in sorted(self._patches.array_keys(), key=_natural):
            a = self._patches[key].attrs
            out.append(CorrectionPatch(key=key, level=int(a["level"]),
                                       region=tuple(int(v) for v in a["region"]),
                                       downsample=float(a.get("downsample", 1.0)),
                                       source=str(a.get("source", "paint"))))
        return out

    def find(self, level: int, region: tuple[int, int, int, int]) -> CorrectionPatch | None:
        """The patch over exactly this level and region, if one was started before."""
        region = tuple(int(v) for v in region)
        for p in self.patches():
            if p.level == level and p.region == region:
                return p
        return None

    def create_patch(self, *, level: int, region: tuple[int, int, int, int], downsample: float = 1.0,
                     source: str = "paint") -> CorrectionPatch:
        """Start a patch over ``region`` at ``level`` (or return the one already there)."""
        region = tuple(int(v) for v in region)
        if region[2] <= 0 or region[3] <= 0:
            raise DataError(f"{self.path}: empty correction region {region}")
        existing = self.find(level, region)
        if existing is not None and existing.source == source:
            return existing
        key = f"p{len(list(self._patches.array_keys()))}"
        while key in self._patches:
            key = f"{key}_"
        arr = self._patches.create_array(key, shape=(region[2], region[3]), dtype="uint8",
                                         chunks=(min(CHUNK, region[2]), min(CHUNK, region[3])),
                                         fill_value=0)
        arr.attrs.update(level=int(level), region=list(region), downsample=float(downsample),
                         source=source, created=_now())
        logger.info("%s: new correction patch %s at level %d over %s", self.path, key, level, region)
        return CorrectionPatch(key, int(level), region, float(downsample), source)

    # --- pixels -----------------------------------------------------------------------------
    def write(self, key: str, offset: tuple[int, int], block: np.ndarray) -> None:
        """Write ``block`` (labels, 0 = not corrected) at ``offset`` (y, x) inside patch ``key``.

        Goes straight to disk (only the zarr chunks the block touches), so a crash after this
        call loses nothing.
        """
        block = np.asarray(block)
        if block.ndim != 2:
            raise DataError(f"{self.path}: a correction block must be 2-D, got shape {block.shape}")
        k = len(self.class_names)
        if k and block.size and int(block.max()) > k:
            raise DataError(f"{self.path}: label {int(block.max())} is not a class "
                            f"(classes are 1..{k}: {', '.join(self.class_names)})")
        arr = self._array(key)
        y, x = int(offset[0]), int(offset[1])
        h, w = block.shape
        if y < 0 or x < 0 or y + h > arr.shape[0] or x + w > arr.shape[1]:
            raise DataError(f"{self.path}: block {block.shape} at {offset} falls outside patch {key} {arr.shape}")
        arr[y:y + h, x:x + w] = block.astype(np.uint8, copy=False)
        arr.attrs["updated"] = _now()

    def read(self, key: str) -> np.ndarray:
        """All labels of patch ``key`` (uint8, 0 = not corrected)."""
        return np.asarray(self._array(key)[...])

    def delete(self, key: str) -> None:
        del self._patches[key]

    def counts(self) -> dict[int, int]:
        """Corrected pixels per label over all patches."""
        total: dict[int, int] = {}
        for p in self.patches():
            values, n = np.unique(self.read(p.key), return_counts=True)
            for v, c in zip(values.tolist(), n.tolist()):
                if v:
                    total[v] = total.get(v, 0) + c
        return total

    def corrected_pixels(self) -> int:
        return sum(int(np.count_nonzero(self.read(p.key))) for p in self.patches())

    def samples(self, read_rgb: Callable[[int, tuple[int, int, int, int]], np.ndarray],
                *, keys: Iterable[str] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Training samples ``(rgb, mask)`` for every patch with corrected pixels.

        ``read_rgb(level, region)`` returns the slide's RGB uint8 pixels under a patch; the mask
        is cropped to the bounding box of its corrected pixels (plus a margin of context).
        """
        wanted = set(keys) if keys is not None else None
        out = []
        for p in self.patches():
            if wanted is not None and p.key not in wanted:
                continue
            mask = self.read(p.key)
            ys, xs = np.nonzero(mask)
            if ys.size == 0:
                continue
            margin = 64  # context around the strokes: the model sees what surrounds them
            y0, y1 = max(0, ys.min() - margin), min(mask.shape[0], ys.max() + 1 + margin)
            x0, x1 = max(0, xs.min() - margin), min(mask.shape[1], xs.max() + 1 + margin)
            rgb = np.asarray(read_rgb(p.level, (p.region[0] + y0, p.region[1] + x0, y1 - y0, x1 - x0)))
            out.append((rgb, mask[y0:y1, x0:x1].copy()))
        return out

    # --- QuPath import ----------------------------------------------------------------------
    def import_geojson(self, path: str | os.PathLike, *, level: int = 0, downsample: float = 1.0,
                       level_shape: tuple[int, int] | None = None,
                       class_names: Iterable[str] | None = None) -> CorrectionPatch:
        """Rasterise the class-annotated polygons of a QuPath GeoJSON file into a new patch.

        Coordinates in the file are level-0 pixels (QuPath's convention); they are divided by
        ``downsample`` onto the grid of ``level`` and clipped to ``level_shape`` (that level's
        (Y, X)) when given. Later features paint over earlier ones; holes are left uncorrected.
        """
        path = Path(path)
        names = list(class_names) if class_names is not None else self.class_names
        if not names:
            raise DataError(f"{path}: the store knows no class names; load a model first")
        polygons = read_geojson_polygons(path, names)
        mask, (y0, x0) = rasterise_polygons(polygons, downsample=downsample, level_shape=level_shape,
                                            source=path)
        patch = self.create_patch(level=level, region=(y0, x0, mask.shape[0], mask.shape[1]),
                                  downsample=downsample, source=f"geojson:{path.name}")
        self.write(patch.key, (0, 0), mask)
        logger.info("%s: imported %d polygons from %s into patch %s", self.path, len(polygons), path, patch.key)
        return patch

    def _array(self, key: str):
        try:
            return self._patches[key]
        except KeyError:
            raise DataError(f"{self.path}: no correction patch {key!r}") from None


def _natural(key: str):
    digits = "".join(ch for ch in key if ch.isdigit())
    return (int(digits) if digits else 0, key)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
