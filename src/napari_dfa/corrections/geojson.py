"""QuPath GeoJSON annotations as corrections (no Qt): polygons with classes, rasterised onto a level.

Reading (:func:`read_geojson`) accepts what QuPath writes and reports, feature by feature, what it
skipped and why — nothing is dropped silently and one odd feature never aborts the import:

- a FeatureCollection, a list of features (QuPath's older export) or one feature; also
  ``.geojson.gz`` and ``.zip`` exports (every ``.geojson``/``.json`` member of the archive);
- the class from ``properties.classification.name``, a derived class written as
  ``classification.names: ["Tumor", "Positive"]`` (matched as ``"Tumor: Positive"``, then as its
  base ``"Tumor"``), or a plain ``classification`` / ``class`` string; matching ignores case;
  QuPath's ``Ignore*`` class becomes the ignore label 0 (it clears what was drawn under it);
- objects nested in ``childObjects`` (in ``properties`` or on the feature);
- Polygon, MultiPolygon and GeometryCollection geometries (lines and points are skipped);
- annotations only by default: detections, cells and tiles (``properties.objectType``, or the
  ``PathDetectionObject``-style ids of QuPath 0.2) are told apart and skipped unless asked for;
- an unknown class, a missing class, a ring with fewer than 3 distinct vertices (or all on one
  line), empty or malformed coordinates, non-finite numbers, a non-object feature or a polygon
  beyond any slide (:data:`MAX_COORDINATE`) is skipped with its reason;
- a ``crs`` member (GeoJSON 2008; QuPath writes none) that names a coordinate system is refused:
  the coordinates are level-0 pixels, and degrees or metres read as pixels land in a corner;
- what is kept but settled by a rule is noted (``GeoJSONImport.notes``): a ring that crosses itself
  so that its loops cancel (a bow tie) is filled by the even-odd rule, and where annotations of
  two classes overlap the later one in the file wins (:func:`rasterise_polygons` counts the pixels).

Rasterising the polygons onto a level: :mod:`.rasterise`.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Iterable
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError

logger = logging.getLogger(__name__)

# No glass slide is a million pixels long at any scanner resolution (250 mm at 0.25 µm/px): a
# coordinate beyond this is a unit mix-up (µm, nm) or a broken export, not an annotation.
MAX_COORDINATE = 1_000_000
MAX_DECOMPRESSED = 1 << 30  # bytes read from a .gz/.zip (a 1 GiB GeoJSON is ~10 M cells)
OBJECT_TYPES = ("annotation", "detection", "cell", "tile", "tma_core")
_QUPATH_02_IDS = {"PathAnnotationObject": "annotation", "PathDetectionObject": "detection",
                  "PathCellObject": "cell", "PathTileObject": "tile", "TMACoreObject": "tma_core"}


@dataclass
class GeoJSONImport:
    """What :func:`read_geojson` found.

    Attributes:
      polygons: ``[(label, rings)]``; label 0 = ignore (QuPath ``Ignore*``), 1..K a class;
        rings[0] is the exterior, the rest its holes, each an n×2 array of level-0 (x, y).
      skipped: ``[(where, why)]`` per skipped feature, e.g. ``("feature 3", "class 'Fat' ...")``.
      per_class: polygons imported per class name.
    """

    source: str
    polygons: list[tuple[int, list[np.ndarray]]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    per_class: dict[str, int] = field(default_factory=dict)
    feature_ids: list[str] = field(default_factory=list)  # QuPath's object ids of the imported features
    # regions confirmed as right ("Looks right"; QuPath object metadata napari-dfa = confirmed), as polygons
    confirmed: list[tuple[int, list[np.ndarray]]] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # correction patches an import replaced
    notes: list[str] = field(default_factory=list)  # kept, but settled by a rule the user should know

    def report(self, limit: int = 20) -> str:
        """Human-readable summary: what was imported, each skipped feature and why, then the notes."""
        got = ", ".join(f"{n} {c}" for n, c in self.per_class.items()) or "nothing"
        lines = [f"{self.source}: imported {len(self.polygons)} polygons ({got}); skipped {len(self.skipped)} features"]
        lines += [f"  {where}: {why}" for where, why in self.skipped[:limit]]
        if len(self.skipped) > limit:
            lines.append(f"  ... and {len(self.skipped) - limit} more")
        lines += [f"  note: {n}" for n in self.notes[:limit]]
        return "\n".join(lines)


# Class names as pathologists write them: US and UK spellings, and QuPath's built-in classes, match
# the model's names (shown in the Fine-tune widget's import message and the CLI's report).
SPELLINGS = {"tumor": "tumour", "hemorrhage": "haemorrhage", "edema": "oedema", "hematoxylin": "haematoxylin",
             "esophagus": "oesophagus", "leukocyte": "leucocyte", "leukocytes": "leucocytes", "anemia": "anaemia"}
QUPATH_CLASSES = {"immune cells": "inflammatory"}  # QuPath's default classes that mean one of ours


def canonical(name: str) -> str:
    """How a class name is matched: lower case, spaces collapsed, US spellings as UK ones word by
    word ("Tumor" and "tumour" are one class)."""
    words = str(name).strip().lower().replace("_", " ").split()
    return " ".join(SPELLINGS.get(w, w) for w in words)


def class_matcher(class_names) -> dict[str, int]:
    """``{canonical name: label}`` for a class list, with QuPath's built-in names that mean one of
    them (``Immune cells`` → ``inflammatory`` when the list has it and no class of that name)."""
    out = {canonical(n): i + 1 for i, n in enumerate(class_names)}
    for qupath, ours in QUPATH_CLASSES.items():
        if qupath not in out and ours in out:
            out[qupath] = out[ours]
    return out


def read_geojson_polygons(path: str | os.PathLike, class_names: list[str]) -> list[tuple[int, list]]:
    """``[(label, rings)]`` from a QuPath GeoJSON file (see :func:`read_class_polygons`)."""
    return read_class_polygons(path, class_names).polygons


def read_class_polygons(path: str | os.PathLike, class_names: list[str]) -> "GeoJSONImport":
    """:func:`read_geojson` for an import: skipped features are logged one per line, and a file
    with no class polygon left raises DataError naming the first reasons."""
    found = read_geojson(path, class_names)
    if found.skipped or found.notes:
        logger.warning("%s", found.report())
    if not any(label > 0 for label, _ in found.polygons + found.confirmed):
        why = "".join(f"; {w}: {r}" for w, r in found.skipped[:5])
        raise DataError(f"{found.source}: no class-annotated polygons found (set a classification in QuPath "
                        f"that the model knows: {', '.join(class_names)}){why}")
    return found


def read_geojson(path: str | os.PathLike, class_names: list[str], *,
                 object_types: tuple[str, ...] = ("annotation",)) -> GeoJSONImport:
    """Read the class-annotated polygons of a QuPath GeoJSON (``.geojson``, ``.json``,
    ``.geojson.gz``, ``.zip``); never raises for one bad feature, only for an unreadable file."""
    path = Path(path)
    found = GeoJSONImport(source=str(path))
    lowered = class_matcher(class_names)
    for member, doc in _documents(path):
        prefix = f"{member}: " if member else ""
        _check_crs(doc, f"{path}{' ' + member if member else ''}")
        if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
            features = doc.get("features")
            if not isinstance(features, list):
                found.skipped.append((f"{prefix}features", "not a list of features"))
                continue
        elif isinstance(doc, list):
            features = doc
        elif isinstance(doc, dict) and doc.get("type") in ("Feature", "GeometryCollection", "Polygon",
                                                           "MultiPolygon"):
            features = [doc if doc.get("type") == "Feature" else {"type": "Feature", "geometry": doc}]
        else:
            raise DataError(f"{path}{' ' + member if member else ''}: expected a GeoJSON FeatureCollection "
                            "of annotations (QuPath: File > Export objects as GeoJSON)")
        for i, feat in enumerate(features):
            _feature(feat, f"{prefix}feature {i}", lowered, class_names, object_types, found)
    return found


def _check_crs(doc, where: str) -> None:
    """A ``crs`` member that names a coordinate system is refused (see the module notes): QuPath
    writes none, and napari-dfa reads level-0 pixels. ``null`` and names that say pixels or image
    coordinates pass."""
    if not isinstance(doc, dict) or doc.get("crs") is None:
        return
    crs = doc["crs"]
    props = crs.get("properties") if isinstance(crs, dict) else None
    name = str((props or {}).get("name") or (props or {}).get("href") or crs)
    if any(word in name.lower() for word in ("pixel", "image")):
        return
    raise DataError(f"{where}: declares the coordinate system {name!r} (a 'crs' member); napari-dfa reads "
                    "annotations in level-0 pixels, as QuPath exports them (File > Export objects as GeoJSON), "
                    "and coordinates in degrees or metres would land in a corner of the slide")


def _documents(path: Path):
    """``(member name, parsed JSON)`` of a file, a .gz or every GeoJSON member of a .zip."""
    try:
        if path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.lower().endswith((".geojson", ".json"))
                         and not n.startswith("__MACOSX/")]
                if not names:
                    raise DataError(f"{path}: the zip archive holds no .geojson or .json file")
                for name in names:
                    with zf.open(name) as fh:
                        yield name, _parse(path, _read_bounded(path, fh), name)
            return
        with open(path, "rb") as raw:
            head = raw.read(2)
            raw.seek(0)
            fh = gzip.GzipFile(fileobj=raw) if head == b"\x1f\x8b" else raw
            yield "", _parse(path, _read_bounded(path, fh), "")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable GeoJSON file ({exc})") from None


def _read_bounded(path: Path, fh) -> bytes:
    data = fh.read(MAX_DECOMPRESSED + 1)
    if len(data) > MAX_DECOMPRESSED:
        raise DataError(f"{path}: more than {MAX_DECOMPRESSED >> 20} MiB of GeoJSON; split the export")
    return data


def _parse(path: Path, data: bytes, member: str):
    try:
        return json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        where = f"{path}{' ' + member if member else ''}"
        raise DataError(f"{where}: not a readable GeoJSON file ({type(exc).__name__}: {str(exc)[:200]})") from None


def _feature(feat, where: str, lowered, class_names, object_types, found: GeoJSONImport) -> None:
    if not isinstance(feat, dict):
        found.skipped.append((where, f"not a GeoJSON feature ({_short(feat)})"))
        return
    props = feat.get("properties")
    props = props if isinstance(props, dict) else {}
    _own_polygons(feat, props, where, lowered, class_names, object_types, found)
    # Children lie inside their parent in QuPath's hierarchy: drawn after it, so over it.
    for holder in (props, feat):
        children = holder.get("childObjects")
        if isinstance(children, list):
            for j, child in enumerate(children):
                _feature(child, f"{where} > child {j}", lowered, class_names, object_types, found)


def _own_polygons(feat: dict, props: dict, where: str, lowered, class_names, object_types,
                  found: GeoJSONImport) -> None:
    kind = _object_type(feat, props)
    if kind not in object_types:
        found.skipped.append((where, f"a QuPath {kind} object; corrections are read from "
                                     f"{' and '.join(object_types)} objects"))
        return
    name, candidates = _class_name(props)
    if name is None:
        found.skipped.append((where, "no classification (set a class in QuPath)"))
        return
    label = None
    for cand in candidates:
        if cand.lower().startswith("ignore"):
            label = 0  # QuPath's Ignore*: not corrected
            break
        if canonical(cand) in lowered:
            label = lowered[canonical(cand)]
            break
    if label is None:
        found.skipped.append((where, f"class {name!r}, which the model does not know "
                                     f"(classes: {', '.join(class_names)}); rename it in QuPath"))
        return
    polys, reasons = _polygons(feat.get("geometry"))
    for why in reasons:
        found.skipped.append((where, why))
    if not polys:
        if not reasons:
            found.skipped.append((where, "no polygon geometry"))
        return
    cls = "ignore" if label == 0 else class_names[label - 1]
    fid = feat.get("id", props.get("id"))
    if isinstance(fid, (str, int)) and not isinstance(fid, bool) and str(fid):
        found.feature_ids.append(str(fid))
    confirmed = is_confirmed(props)
    for rings in polys:
        if _area(rings[0]) == 0.0:
            found.notes.append(f"{where}: its outline crosses itself so that its loops cancel (a bow tie); "
                               "filled by the even-odd rule, every loop painted")
        (found.confirmed if confirmed else found.polygons).append((label, rings))
        found.per_class[cls] = found.per_class.get(cls, 0) + 1


CONFIRMED = {"napari-dfa": "confirmed"}  # QuPath object metadata of a region confirmed as right


def is_confirmed(props: dict) -> bool:
    """Whether a feature is a region the pathologist confirmed as right (exported by napari-dfa
    with QuPath object metadata ``napari-dfa: confirmed``, which QuPath keeps)."""
    meta = props.get("metadata")
    return isinstance(meta, dict) and str(meta.get("napari-dfa", "")).lower() == "confirmed"


def _object_type(feat: dict, props: dict) -> str:
    kind = props.get("objectType")
    if isinstance(kind, str) and kind:
        kind = kind.lower().replace(" ", "_")
        return "tma_core" if kind in ("tma", "tmacore") else kind
    return _QUPATH_02_IDS.get(feat.get("id"), "annotation") if isinstance(feat.get("id"), str) else "annotation"


def _class_name(props: dict) -> tuple[str | None, list[str]]:
    """The class as written, and the names to try in order (derived class, then its base)."""
    cls = props.get("classification")
    if isinstance(cls, dict):
        names = cls.get("names")
        if isinstance(names, list) and names and all(isinstance(n, str) and n for n in names):
            full = ": ".join(names)
            return full, [full, names[0]]
        if isinstance(cls.get("name"), str) and cls["name"]:
            full = cls["name"]
            return full, [full, full.split(":")[0].strip()]
    for key in ("classification", "class"):
        if isinstance(props.get(key), str) and props[key]:
            return props[key], [props[key]]
    return None, []


def _polygons(geom) -> tuple[list[list[np.ndarray]], list[str]]:
    """Polygons (each a list of rings) in a geometry, and a reason for each part left out."""
    if not isinstance(geom, dict):
        return [], ["no geometry" if geom is None else f"geometry is not an object ({_short(geom)})"]
    gtype, coords = geom.get("type"), geom.get("coordinates")
    if gtype == "Polygon":
        rings, why = _polygon(coords)
        return ([rings], []) if rings else ([], [why])
    if gtype == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            return [], ["MultiPolygon with empty coordinates"]
        out, reasons = [], []
        for k, part in enumerate(coords):
            rings, why = _polygon(part)
            if rings:
                out.append(rings)
            else:
                reasons.append(f"MultiPolygon part {k}: {why}")
        return out, reasons
    if gtype == "GeometryCollection":
        parts = geom.get("geometries")
        if not isinstance(parts, list):
            return [], ["GeometryCollection without a geometries list"]
        out, reasons = [], []
        for k, part in enumerate(parts):
            polys, why = _polygons(part)
            out += polys
            reasons += [f"GeometryCollection part {k}: {w}" for w in why]
        return out, reasons
    return [], [f"a {gtype or 'missing'} geometry, not a polygon"]


def _polygon(coords) -> tuple[list[np.ndarray] | None, str]:
    if not isinstance(coords, list) or not coords:
        return None, "empty coordinates"
    rings = []
    for k, ring in enumerate(coords):
        arr, why = _ring(ring)
        if arr is None:
            if k == 0:
                return None, why
            continue  # a broken hole is left out; the shell still counts
        rings.append(arr)
    shell = rings[0]
    if abs(_area(shell)) == 0.0 and np.linalg.matrix_rank(shell - shell[0]) < 2:
        return None, "a polygon with no area (its vertices lie on one line)"
    # zero area otherwise: loops that cancel (a bow tie), kept and noted by _feature
    lo, hi = shell.min(axis=0), shell.max(axis=0)
    if (hi < 0).any() or (lo > MAX_COORDINATE).any():
        return None, (f"lies outside any slide (x {lo[0]:.0f}..{hi[0]:.0f}, y {lo[1]:.0f}..{hi[1]:.0f} "
                      f"level-0 pixels); are the coordinates in pixels?")
    if max(abs(lo).max(), abs(hi).max()) > MAX_COORDINATE:
        return None, (f"reaches beyond any slide (coordinates up to {max(abs(lo).max(), abs(hi).max()):.0f}, "
                      f"more than {MAX_COORDINATE} level-0 pixels); are the coordinates in pixels?")
    return rings, ""


def _ring(ring) -> tuple[np.ndarray | None, str]:
    if not isinstance(ring, list) or not ring:
        return None, "empty coordinates"
    try:
        arr = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return None, "malformed coordinates (expected [x, y] number pairs)"
    if arr.ndim != 2 or arr.shape[1] < 2:
        return None, "malformed coordinates (expected [x, y] number pairs)"
    arr = arr[:, :2]
    if not np.isfinite(arr).all():
        return None, "coordinates that are not finite numbers"
    if len(np.unique(arr, axis=0)) < 3:
        return None, f"a polygon with {len(np.unique(arr, axis=0))} distinct vertices (at least 3 make an area)"
    return arr, ""


def _area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _short(value, n: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


# --- rasterising ----------------------------------------------------------------------------------
def geojson_classes(path: str | os.PathLike) -> dict[str, dict]:
    """The classes of the annotations in a QuPath GeoJSON, as the reader matches them:
    ``{name: {"features": n, "color": (r, g, b) | None}}``; QuPath's ``Ignore*`` is left out (it
    is the ignore label, not a class). For "Add missing classes" on import."""
    found: dict[str, dict] = {}

    def visit(feat) -> None:
        if not isinstance(feat, dict):
            return
        props = feat.get("properties") if isinstance(feat.get("properties"), dict) else {}
        if _object_type(feat, props) == "annotation":
            name, _ = _class_name(props)
            if name and not name.lower().startswith("ignore"):
                entry = found.setdefault(name, {"features": 0, "color": None})
                entry["features"] += 1
                cls = props.get("classification")
                color = cls.get("color") if isinstance(cls, dict) else None
                if entry["color"] is None and color is not None:
                    entry["color"] = _qupath_color(color)
        for holder in (props, feat):
            children = holder.get("childObjects")
            if isinstance(children, list):
                for child in children:
                    visit(child)

    for _member, doc in _documents(Path(path)):
        if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
            features = doc.get("features") if isinstance(doc.get("features"), list) else []
        elif isinstance(doc, list):
            features = doc
        else:
            features = [doc]
        for feat in features:
            visit(feat)
    return found


def missing_classes(found: dict[str, dict], class_names: Iterable[str]) -> list[str]:
    """Names of ``found`` (from :func:`geojson_classes`) that match none of ``class_names`` the way
    the reader matches (case-insensitive; a derived ``"Tumor: Positive"`` also as ``"Tumor"``)."""
    known = class_matcher(class_names)
    return [n for n in found if canonical(n) not in known and canonical(n.split(":")[0]) not in known]


def matched_names(found: dict[str, dict], class_names) -> dict[str, str]:
    """``{name in the file: class it was matched to}`` for names that differ from the class's own
    (case aside): what an import says it did ("Tumor" → "tumour", "Immune cells" → "inflammatory")."""
    known = class_matcher(class_names)
    out = {}
    for n in found:
        label = known.get(canonical(n), known.get(canonical(n.split(":")[0])))
        if label is not None and str(class_names[label - 1]).lower() != n.split(":")[0].strip().lower():
            out[n] = class_names[label - 1]
    return out


def _qupath_color(color) -> tuple[int, int, int] | None:
    """QuPath writes a colour as [r, g, b] or as one packed (A)RGB integer."""
    try:
        if isinstance(color, (list, tuple)) and len(color) >= 3:
            return tuple(int(v) & 255 for v in color[:3])  # type: ignore[return-value]
        if isinstance(color, (int, float)):
            v = int(color) & 0xFFFFFF
            return ((v >> 16) & 255, (v >> 8) & 255, v & 255)
    except (TypeError, ValueError):
        pass
    return None
