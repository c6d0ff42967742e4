"""The on-disk store of a pathologist's label corrections (no Qt).

(Over 450 lines: one class, :class:`CorrectionStore`, whose methods all read or write the one zarr
layout below — patches, their attributes, the class list they are bound to; GeoJSON parsing and
rasterising live in :mod:`.geojson` and :mod:`.rasterise`, only the calls into them are here.)

A correction is a patch of labels over a rectangular region of one slide pyramid level; ``0`` means
"not corrected" (the ignore label), ``1..K`` the class the pathologist painted. Patches live in one
zarr group per slide, written block by block as the brush moves, so a process that is killed right
after a stroke loses nothing.

A store belongs to a slide's *content* (:func:`slide_content_key`: a hash of decoded level-0 pixels,
the shape and the µm per pixel — :func:`napari_dfa.files.paths.content_key`), not to its path: a moved or
renamed slide finds its corrections, and the same pixels opened through another reader find the
same store. Nothing in a store is used without being shown: the Fine-tune widget lists the patches
(class, area, when) as soon as a slide with saved corrections is opened; hidden patches
(:meth:`CorrectionStore.set_hidden`) are neither shown nor trained on.

Layout of a store (``<root>/<slide stem>-<content key>.zarr``)::

    attrs: {"slide_path": ..., "content_key": ..., "class_names": [...],
            "format": "napari-dfa-corrections/1"}
    patches/<key>          uint8 h×w, chunks 256×256, fill 0
        attrs: {"level": int, "region": [y0, x0, h, w], "downsample": float, "source": str,
                "created": iso time, "updated": iso time, "hidden": bool}

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
from ..files.paths import corrections_store_path
from ..slide.content import KEY_TILE, slide_content_key
from .geojson import CONFIRMED, GeoJSONImport, read_class_polygons
from .rasterise import rasterise_polygons
from .writelock import write_lock

logger = logging.getLogger(__name__)

# slide_content_key and KEY_TILE live with the slides (labels stores record the key too); kept here
# by name, where the stores named by it are.
__all__ = ["CHUNK", "FORMAT", "KEY_TILE", "CorrectionPatch", "CorrectionStore", "slide_content_key"]

FORMAT = "napari-dfa-corrections/1"
CHUNK = 256
SAMPLE_CELL = 1024  # a training sample covers at most this many pixels per side (plus context)
SAMPLE_MARGIN = 64  # context around the strokes: the model sees what surrounds them
# A training sample is read with at least this much of the slide around it (per side, in level
# pixels): a model's labels depend on the context it is given, and scoring it on small crops scored
# the demo model at 0.27 agreement with its own labels on a 256² block (0.68 at 512, 1.00 at 1024).
SAMPLE_CONTEXT = 1024


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
        # What this handle's writers last saw of each patch (set by read(), moved by write()):
        # a write changes only the pixels its writer changed, so another process's strokes stay.
        self._seen: dict[str, np.ndarray] = {}
        with write_lock(self.path):
            update = {"format": FORMAT}
            if slide_path is not None and "slide_path" not in attrs:
                update["slide_path"] = str(slide_path)
            self._group.attrs.update(update)
            self._patches = self._group.require_group("patches")
            if class_names is not None:
                self._bind_classes([str(n) for n in class_names])

    @classmethod
    def for_slide(
        cls,
        slide_path: str | os.PathLike,
        *,
        root: str | os.PathLike | None = None,
        class_names: Iterable[str] | None = None,
        create: bool = True,
        content: str | None = None,
    ) -> CorrectionStore:
        """Open (or create) the store of a slide under ``root`` (default: the cache folder): the
        store of its content key ``content`` (:func:`slide_content_key`) when given, else of its
        path (a layer made in code has no file)."""
        path = corrections_store_path(slide_path, root=root, content=content)
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        store = cls(path, slide_path=slide_path, class_names=class_names, create=create)
        if content is not None and store._attrs().get("content_key") != content:
            store._set_attrs(content_key=content)
        return store

    # --- metadata ---------------------------------------------------------------------------
    # The group's attributes are read from disk each time, not from this handle's copy: several
    # handles of one store live at once (the correction layer's recorder, the widget's class edits),
    # and a class added through one must be a class for the others (strokes of it were refused).
    def _attrs(self) -> dict:
        try:
            return zarr.open_group(str(self.path), mode="r").attrs.asdict()
        except Exception:  # noqa: BLE001 - moved away meanwhile: what this handle last saw
            return self._group.attrs.asdict()

    def _set_attrs(self, **values) -> None:
        """Update attributes on a fresh handle, so that a stale copy never overwrites newer ones."""
        with write_lock(self.path):
            self._group = zarr.open_group(str(self.path), mode="a")
            self._group.attrs.update(values)

    def _bind_classes(self, names: list[str]) -> None:
        """Open the store with the class list ``names``: the same list (case aside) as stored, or a
        store without corrections, takes it as given; otherwise the corrections are renumbered by
        class name, and a class that has corrections but is missing from ``names`` is refused —
        never new names over old numbers (tumour strokes read as inflammatory)."""
        stored = self.class_names
        if [n.lower() for n in stored] == [n.lower() for n in names] or not stored:
            self._set_attrs(class_names=names)
            return
        used = {n for n, px in self.counts_by_name(include_hidden=True).items() if px}
        missing = [n for n in stored if n in used and n.lower() not in {m.lower() for m in names}]
        if missing:
            raise DataError(f"{self.path}: holds corrections of {', '.join(repr(n) for n in missing)}, which the "
                            f"class list {names} lacks; open it with a list that has them (the store's: "
                            f"{stored}), or delete those corrections first")
        if used:
            logger.warning("%s: corrections renumbered by class name from %s to %s", self.path, stored, names)
        self.remap_classes(names)

    @property
    def slide_path(self) -> str | None:
        return self._attrs().get("slide_path")

    @property
    def class_names(self) -> list[str]:
        return list(self._attrs().get("class_names") or [])

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

    def info(self, key: str) -> dict:
        """What the list of saved corrections shows for patch ``key``: ``{"key", "source",
        "created", "updated", "hidden", "pixels": {class name: corrected pixels}}``."""
        arr = self._array(key)
        names = self.class_names
        values, n = np.unique(np.asarray(arr[...]), return_counts=True)
        pixels = {(names[v - 1] if 0 < v <= len(names) else str(v)): int(c)
                  for v, c in zip(values.tolist(), n.tolist()) if v}
        a = arr.attrs
        return {"key": key, "source": str(a.get("source", "paint")), "created": a.get("created"),
                "updated": a.get("updated") or a.get("created"), "hidden": bool(a.get("hidden", False)),
                "level": int(a["level"]), "region": [int(v) for v in a["region"]], "pixels": pixels}

    def set_hidden(self, key: str, hidden: bool = True) -> None:
        """Hide a patch (kept on disk, neither shown nor trained on) or show it again."""
        with write_lock(self.path):
            self._array(key).attrs["hidden"] = bool(hidden)

    def hidden(self, key: str) -> bool:
        return bool(self._array(key).attrs.get("hidden", False))

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
        with write_lock(self.path):  # two processes never start the same patch, nor one key twice
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

    def confirm_region(self, *, level: int, region: tuple[int, int, int, int], labels: np.ndarray,
                       downsample: float = 1.0) -> CorrectionPatch:
        """Store the labels a pathologist confirmed as right over ``region`` ("Looks right"): a
        patch with source ``confirmed`` holding them (0 where there is no tissue), so they count as
        verified pixels — trained on, held back by whole regions to test a new model, exported and
        imported with the corrections. Corrections painted over them (other patches at the same
        level) win where they overlap. Confirming the same region again replaces what it held."""
        labels = np.asarray(labels)
        if labels.shape != (int(region[2]), int(region[3])):
            raise DataError(f"{self.path}: confirmed labels {labels.shape} do not match the region {tuple(region)}")
        with write_lock(self.path):
            patch = self.create_patch(level=level, region=region, downsample=downsample, source="confirmed")
            self._seen.pop(patch.key, None)  # replaced whole: not merged with what was there
            self.write(patch.key, (0, 0), labels)
        return patch

    # --- pixels -----------------------------------------------------------------------------
    def write(self, key: str, offset: tuple[int, int], block: np.ndarray, *,
              class_names: Iterable[str] | None = None) -> None:
        """Write ``block`` (labels, 0 = not corrected) at ``offset`` (y, x) inside patch ``key``.

        Goes straight to disk (only the zarr chunks the block touches), so a crash after this
        call loses nothing. Safe beside other writers (:mod:`.writelock`): after this handle
        ``read`` the patch, only the pixels that differ from what it read (or last wrote) are
        written, so strokes another process painted meanwhile inside the block stay. With
        ``class_names`` (the list the block's labels mean) they are mapped to the store's list
        by name, should it have changed meanwhile.
        """
        block = np.asarray(block)
        if block.ndim != 2:
            raise DataError(f"{self.path}: a correction block must be 2-D, got shape {block.shape}")
        block = block.astype(np.uint8, copy=False)
        with write_lock(self.path):
            names = self.class_names
            if class_names is not None and [str(n) for n in class_names] != names:
                block = self._mapping(list(class_names), names)[block]
            k = len(names)
            if k and block.size and int(block.max()) > k:
                raise DataError(f"{self.path}: label {int(block.max())} is not a class "
                                f"(classes are 1..{k}: {', '.join(names)})")
            arr = self._array(key)
            y, x = int(offset[0]), int(offset[1])
            h, w = block.shape
            if y < 0 or x < 0 or y + h > arr.shape[0] or x + w > arr.shape[1]:
                raise DataError(f"{self.path}: block {block.shape} at {offset} falls outside patch {key} {arr.shape}")
            seen = self._seen.get(key)
            if seen is not None and seen.shape == arr.shape:
                mine = block != seen[y:y + h, x:x + w]
                merged = np.where(mine, block, np.asarray(arr[y:y + h, x:x + w]))
                seen[y:y + h, x:x + w] = block
            else:
                merged = block
            arr[y:y + h, x:x + w] = merged
            arr.attrs["updated"] = _now()

    def _mapping(self, source: list[str], target: list[str]) -> np.ndarray:
        """Label in ``source`` → label in ``target`` by name (case aside); unknown names refused."""
        index = {n.lower(): i + 1 for i, n in enumerate(target)}
        lut = np.zeros(256, np.uint8)
        for v, n in enumerate(source, start=1):
            if str(n).lower() not in index:
                raise DataError(f"{self.path}: class {n!r} is no longer in the store's class list {target}; "
                                "add it back, or paint with a class the list has")
            lut[v] = index[str(n).lower()]
        return lut

    def read(self, key: str) -> np.ndarray:
        """All labels of patch ``key`` (uint8, 0 = not corrected). What is read is what this
        handle's later writes to the patch are measured against (see :meth:`write`)."""
        data = self._load(key)
        self._seen[key] = data.copy()
        return data

    def _load(self, key: str) -> np.ndarray:
        return np.asarray(self._array(key)[...])

    def delete(self, key: str) -> None:
        with write_lock(self.path):
            del self._patches[key]
        self._seen.pop(key, None)

    def counts(self, *, include_hidden: bool = True) -> dict[int, int]:
        """Corrected pixels per label over all patches (hidden ones too unless told)."""
        total: dict[int, int] = {}
        for p in self.patches():
            if not include_hidden and self.hidden(p.key):
                continue
            values, n = np.unique(self._load(p.key), return_counts=True)
            for v, c in zip(values.tolist(), n.tolist()):
                if v:
                    total[v] = total.get(v, 0) + c
        return total

    def counts_by_name(self, *, include_hidden: bool = False) -> dict[str, int]:
        """Corrected pixels per class name over the patches in use (not hidden)."""
        names = self.class_names
        return {(names[v - 1] if 0 < v <= len(names) else str(v)): n
                for v, n in sorted(self.counts(include_hidden=include_hidden).items())}

    def corrected_pixels(self, *, include_hidden: bool = False) -> int:
        """Corrected pixels over the patches in use (not hidden)."""
        return sum(int(np.count_nonzero(self._load(p.key))) for p in self.patches()
                   if include_hidden or not self.hidden(p.key))

    def samples(self, read_rgb: Callable[[int, tuple[int, int, int, int]], np.ndarray],
                *, keys: Iterable[str] | None = None, class_names: Iterable[str] | None = None,
                include_hidden: bool = False, context: int = SAMPLE_CONTEXT) -> list[tuple[np.ndarray, np.ndarray]]:
        """Training samples ``(rgb, mask)`` for the corrected pixels of the patches in use.

        ``read_rgb(level, region)`` returns the slide's RGB uint8 pixels under a region (white where
        it reaches past the slide). A mask is cropped to the bounding box of its corrected pixels
        plus :data:`SAMPLE_MARGIN`; corrections spread wider than :data:`SAMPLE_CELL` are cut into
        cells of that size, so that two strokes far apart never read the whole slide between them.
        Each cell is then read with the slide around it up to ``context`` pixels a side (default
        :data:`SAMPLE_CONTEXT`; the mask is 0 there), as inference would see it. With
        ``class_names`` the labels are renumbered to that list by class name (a class it lacks
        raises DataError).
        """
        wanted = set(keys) if keys is not None else None
        lut = self._lut(class_names) if class_names is not None else None
        out = []
        for p in self.patches():
            if wanted is not None and p.key not in wanted:
                continue
            if not include_hidden and self.hidden(p.key):
                continue
            mask = self._load(p.key)
            if p.source == "confirmed":
                # corrections painted over a confirmed region say its labels were wrong there
                mask = np.where(self.labels_over(p.level, p.region, confirmed=False) > 0, 0, mask).astype(np.uint8)
            if lut is not None:
                mask = lut[mask]
            for y0, x0, y1, x1 in _cells(mask):
                # the cell inside a box of at least `context` a side, on the slide (not past its top-left)
                gy0, gx0 = p.region[0] + y0, p.region[1] + x0
                bh, bw = max(y1 - y0, context), max(x1 - x0, context)
                by0 = max(0, gy0 - (bh - (y1 - y0)) // 2)
                bx0 = max(0, gx0 - (bw - (x1 - x0)) // 2)
                rgb = _fit_shape(np.asarray(read_rgb(p.level, (by0, bx0, bh, bw))), bh, bw)
                cell = np.zeros((bh, bw), np.uint8)
                cell[gy0 - by0:gy0 - by0 + y1 - y0, gx0 - bx0:gx0 - bx0 + x1 - x0] = mask[y0:y1, x0:x1]
                out.append((rgb, cell))
        return out

    def labels_over(self, level: int, region, *, lut: np.ndarray | None = None,
                    confirmed: bool = True) -> np.ndarray:
        """h×w uint8: the labels of the patches in use at ``level`` over ``region`` (y0, x0, h, w),
        later patches over earlier ones, 0 where none lies; each patch's labels through ``lut``
        first when given (a label it maps to 0 leaves what lies below); ``confirmed=False``: the
        corrections alone, without confirmed regions."""
        y0, x0, h, w = (int(v) for v in region)
        out = np.zeros((h, w), np.uint8)
        for q in self.patches():
            if q.level != level or self.hidden(q.key) or (not confirmed and q.source == "confirmed"):
                continue
            qy, qx, qh, qw = q.region
            ty0, tx0, ty1, tx1 = max(y0, qy), max(x0, qx), min(y0 + h, qy + qh), min(x0 + w, qx + qw)
            if ty1 <= ty0 or tx1 <= tx0:
                continue
            block = self._load(q.key)[ty0 - qy:ty1 - qy, tx0 - qx:tx1 - qx]
            if lut is not None:
                block = lut[block]
            view = out[ty0 - y0:ty1 - y0, tx0 - x0:tx1 - x0]
            view[block > 0] = block[block > 0]
        return out

    def _lut(self, class_names: Iterable[str]) -> np.ndarray:
        """Store label → label in ``class_names`` (by name, case-insensitive)."""
        target = {str(n).lower(): i + 1 for i, n in enumerate(class_names)}
        names = self.class_names
        lut = np.zeros(256, np.uint8)
        used = set(self.counts())
        for v in range(1, len(names) + 1):
            t = target.get(names[v - 1].lower())
            if t is None and v in used:
                raise DataError(f"{self.path}: corrections of class {names[v - 1]!r}, which the class list "
                                f"{list(class_names)} does not have; add the class or delete those corrections")
            lut[v] = t or 0
        return lut

    def remap_classes(self, class_names: Iterable[str], renames: dict[str, str] | None = None) -> None:
        """Make ``class_names`` the store's class list: every patch is renumbered by class name
        (after ``renames`` {old: new}); corrections of a class that is no longer listed are cleared."""
        new = [str(n) for n in class_names]
        renames = {str(k).lower(): str(v).lower() for k, v in (renames or {}).items()}
        target = {n.lower(): i + 1 for i, n in enumerate(new)}
        with write_lock(self.path):  # no stroke lands between the renumbering and the new names
            old = self.class_names
            lut = np.zeros(256, np.uint8)
            for v, n in enumerate(old, start=1):
                lut[v] = target.get(renames.get(n.lower(), n.lower()), 0)
            if not np.array_equal(lut[1:len(old) + 1], np.arange(1, len(old) + 1)):
                for p in self.patches():
                    arr = self._array(p.key)
                    arr[...] = lut[np.asarray(arr[...])]
                    if p.key in self._seen:
                        self._seen[p.key] = lut[self._seen[p.key]]
            self._set_attrs(class_names=new)

    def export_geojson(self, path: str | os.PathLike, *, keys: Iterable[str] | None = None,
                       class_colors=None, include_hidden: bool = False) -> Path:
        """Write the corrections as QuPath GeoJSON annotations (level-0 pixels), one feature per
        class and patch; QuPath reads them back as classified annotations."""
        import json

        from ..labels import labels_to_geojson

        wanted = set(keys) if keys is not None else None
        features = []
        for p in self.patches():
            if (wanted is not None and p.key not in wanted) or (not include_hidden and self.hidden(p.key)):
                continue
            mask = self._load(p.key)
            if not mask.any():
                continue
            offset = (p.region[0] * p.downsample, p.region[1] * p.downsample)
            feats = labels_to_geojson(mask, self.class_names, class_colors, p.downsample, offset)["features"]
            if p.source == "confirmed":  # read back as confirmed, by napari-dfa and through QuPath
                for f in feats:
                    f["properties"]["metadata"] = dict(CONFIRMED)
            features += feats
        path = Path(path)
        path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        logger.info("%s: exported %d correction features to %s", self.path, len(features), path)
        return path

    # --- QuPath import ----------------------------------------------------------------------
    def import_geojson(self, path: str | os.PathLike, *, level: int = 0, downsample: float = 1.0,
                       level_shape: tuple[int, int] | None = None,
                       class_names: Iterable[str] | None = None, report: bool = False):
        """Rasterise the class-annotated polygons of a QuPath GeoJSON file into a new patch.

        Coordinates in the file are level-0 pixels (QuPath's convention); they are divided by
        ``downsample`` onto the grid of ``level`` and clipped to ``level_shape`` (that level's
        (Y, X)) when given. Later features paint over earlier ones; holes are left uncorrected.

        Importing is idempotent: an earlier import of the same file content, or one sharing a
        feature id with it (QuPath's object ids: the same annotations exported again, perhaps
        edited), is replaced, not added to (``GeoJSONImport.replaced`` names the patches).
        Returns the new patch, or ``(patch, GeoJSONImport)`` with ``report=True`` (what was
        imported and each skipped feature with the reason).
        """
        import hashlib

        path = Path(path)
        names = list(class_names) if class_names is not None else self.class_names
        if not names:
            raise DataError(f"{path}: the store knows no class names; load a model first")
        found: GeoJSONImport = read_class_polygons(path, names)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        ids = set(found.feature_ids)
        # Regions confirmed as right get a patch of their own, as "Looks right" makes; rasterised
        # before the lock (seconds for thousands of polygons: another window's strokes wait for none).
        noted = len(found.notes)
        masks = [(rasterise_polygons(polygons, downsample=downsample, level_shape=level_shape, source=path,
                                     class_names=names, notes=found.notes), source)
                 for polygons, source in ((found.polygons, f"geojson:{path.name}"), (found.confirmed, "confirmed"))
                 if polygons]
        for note in found.notes[noted:]:  # overlaps, known only once drawn
            logger.warning("%s: %s", path, note)
        with write_lock(self.path):  # replaced and added as one step beside other writers
            for p in self.patches():
                a = self._array(p.key).attrs
                ours = p.source.startswith("geojson:") or (p.source == "confirmed" and "sha256" in a)
                if ours and (a.get("sha256") == digest or ids & set(a.get("feature_ids", []))):
                    self.delete(p.key)
                    found.replaced.append(p.key)
            made = []
            for (mask, (y0, x0)), source in masks:
                patch = self.create_patch(level=level, region=(y0, x0, mask.shape[0], mask.shape[1]),
                                          downsample=downsample, source=source)
                self.write(patch.key, (0, 0), mask, class_names=names)
                self._array(patch.key).attrs.update(sha256=digest, feature_ids=sorted(ids))
                made.append(patch)
        patch = made[0]
        logger.info("%s: imported %d polygons from %s into patch %s", self.path, len(found.polygons), path, patch.key)
        return (patch, found) if report else patch

    def _array(self, key: str):
        try:
            return self._patches[key]
        except KeyError:
            raise DataError(f"{self.path}: no correction patch {key!r}") from None


def _fit_shape(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    """``rgb`` cut or padded with white (glass) to h×w: a reader may stop at the slide's edge."""
    if rgb.shape[:2] == (h, w):
        return rgb
    out = np.full((h, w, 3), 255, np.uint8)
    out[:min(h, rgb.shape[0]), :min(w, rgb.shape[1])] = rgb[:h, :w]
    return out


def _cells(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(y0, x0, y1, x1) boxes covering the corrected pixels of ``mask``: their bounding box plus
    context, cut into cells of at most :data:`SAMPLE_CELL` when it is larger; empty cells dropped."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return []
    h, w = mask.shape
    by0, bx0, by1, bx1 = int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1
    out = []
    for cy in range(by0, by1, SAMPLE_CELL):
        for cx in range(bx0, bx1, SAMPLE_CELL):
            cell = mask[cy:min(by1, cy + SAMPLE_CELL), cx:min(bx1, cx + SAMPLE_CELL)]
            cys, cxs = np.nonzero(cell)
            if cys.size == 0:
                continue
            y0, x0 = cy + int(cys.min()), cx + int(cxs.min())
            y1, x1 = cy + int(cys.max()) + 1, cx + int(cxs.max()) + 1
            out.append((max(0, y0 - SAMPLE_MARGIN), max(0, x0 - SAMPLE_MARGIN),
                        min(h, y1 + SAMPLE_MARGIN), min(w, x1 + SAMPLE_MARGIN)))
    return out


def _natural(key: str):
    digits = "".join(ch for ch in key if ch.isdigit())
    return (int(digits) if digits else 0, key)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
