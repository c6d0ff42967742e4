"""Class lists (no Qt, no torch): a recipe's, and a dataset folder's own (``classes.json``).

One reader for train, evaluate and bench: a model must never carry another dataset's names (a BCSS
recipe's "inflammatory" on a folder whose label 1 is fat), so a folder says what its labels are, the
recipe or model must agree, and a disagreement stops before any training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..classes import CLASS_SETS, ClassSet, check_class_names, default_colors
from ..errors import ConfigError, DataError
from .config import DataConfig
from .sampath import find_csv, find_image, label_image, read_split_csv

logger = logging.getLogger(__name__)

CLASSES_JSON = "classes.json"  # a folder's own class names: ["A", "B"] or {"names": [...], "colors": [...]}
SYNTH_JSON = "synth.json"  # written by napari_dfa.synth.write_dataset beside img/ and mask/


def class_set_for(data: DataConfig) -> ClassSet:
    """The class list of a recipe: explicit ``class_names`` or a named set of napari_dfa.classes."""
    if not data.class_names and not data.classes:
        raise ConfigError(
            "[data] classes = \"\": the recipe takes its class names from the dataset folder; point it at one "
            f"(--data <folder>) holding {CLASSES_JSON} (the names of labels 1..K), or pass --classes A,B,..."
        )
    if data.class_names:
        check_class_names(data.class_names, what="the class list")  # before training, not at the first save
        colors = data.class_colors or default_colors(len(data.class_names))
        if len(colors) != len(data.class_names):
            raise ConfigError("[data] class_colors needs one colour per entry of class_names")
        return ClassSet(name="custom", names=tuple(data.class_names), colors=tuple(map(tuple, colors)))
    try:
        return CLASS_SETS[data.classes.lower()]
    except KeyError:
        raise ConfigError(
            f"[data] classes = {data.classes!r}; known sets: {', '.join(CLASS_SETS)} "
            "(or give class_names = [...])"
        ) from None


def parse_class_names(text, *, argument: str = "--classes") -> ClassSet:
    """``"A,B,C"`` (or a list) as the classes of labels 1..K, with default colours."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:  # an empty name, a repeated one or too many: refused here, before any training
        names = check_class_names(items, what=f"{argument} {text!r}")
    except DataError as exc:
        raise ConfigError(f"{exc} (give the K class names of labels 1..K, unique, comma-separated, e.g. "
                          "--classes tumour,stroma,fat)") from None
    return ClassSet(name="custom", names=tuple(names), colors=tuple(default_colors(len(names))))


def _class_file(folder: Path) -> tuple[ClassSet, Path, bool] | None:
    """``(classes, file, colours given)`` from the folder's classes.json or synth.json; None without."""
    for name in (CLASSES_JSON, SYNTH_JSON):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the class list ({exc})") from None
        if name == SYNTH_JSON:
            entries = data.get("classes") if isinstance(data, dict) else None
            if not isinstance(entries, list) or not all(isinstance(e, dict) and "name" in e for e in entries):
                raise ConfigError(f"{path}: no 'classes' list of {{'name': ...}} entries")
            names = [str(e["name"]) for e in entries]
            colors = [e.get("color") for e in entries]
        elif isinstance(data, list):
            names, colors = [str(n) for n in data], None
        elif isinstance(data, dict) and isinstance(data.get("names"), list):
            names, colors = [str(n) for n in data["names"]], data.get("colors")
        else:
            raise ConfigError(f'{path}: expected a list of class names (labels 1..K) or '
                              f'{{"names": [...], "colors": [[R, G, B], ...]}}')
        try:
            names = check_class_names(names, what=str(path))
        except DataError as exc:
            raise ConfigError(str(exc)) from None
        given = colors is not None and all(c is not None for c in colors)
        if not given:
            colors = default_colors(len(names))
        try:
            colors = tuple(tuple(int(v) for v in c) for c in colors)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: colors must be [R, G, B] triples") from None
        if len(colors) != len(names) or any(len(c) != 3 for c in colors):
            raise ConfigError(f"{path}: one [R, G, B] colour per class name is needed ({len(names)} names)")
        return ClassSet(name=folder.name, names=tuple(names), colors=colors), path, given
    return None


def read_class_list(folder, classes=None, *, required: bool = True) -> ClassSet | None:
    """The class list of a SAM-Path folder: ``classes`` (``"A,B,C"`` or a list, e.g. ``--classes``)
    if given, else the folder's ``classes.json`` (a list of names or ``{"names": [...], "colors":
    [...]}``), else its ``synth.json`` (:func:`napari_dfa.synth.write_dataset`). Without any of them:
    ConfigError saying what to add, or None when not ``required``."""
    if classes:
        return parse_class_names(classes)
    found = _class_file(Path(folder))
    if found is None:
        if not required:
            return None
        raise ConfigError(f"{folder}: no {CLASSES_JSON} (a list of the class names of labels 1..K) and no "
                          f"{SYNTH_JSON}; write one beside img/ and mask/, e.g. [\"tumour\", \"stroma\"], or pass "
                          "--classes A,B,C")
    return found[0]


def label_range(root, *, csv: str = "", label_shift: int = 0) -> tuple[int, Path | None]:
    """The highest label (after ``label_shift``) in the masks the folder's CSV lists, and a mask that
    holds it. Reads every listed mask once (a missing one is left to :class:`SamPathDataset`)."""
    root = Path(root)
    top, where = 0, None
    for img_id, _ in read_split_csv(find_csv(root, csv)):
        path = find_image(root / "mask", img_id)
        if path is None:
            continue
        high = int(label_image(path).max()) + label_shift
        if high > top:
            top, where = high, path
    return top, where


def _listing(classes: ClassSet) -> str:
    return f"{classes.num_classes} classes ({', '.join(classes.names)})"


def resolve_folder_classes(folder, named: ClassSet | None, *, named_by: str, fix: str, classes=None,
                           csv: str = "", label_shift: int = 0) -> ClassSet:
    """The classes of the dataset in ``folder`` checked against those a recipe or model names.

    ``classes`` (``--classes``) or the folder's class file wins when ``named`` is None; when both
    exist their names must agree (case aside), else ConfigError naming both and what to do
    (``named_by`` says who names ``named``, e.g. ``"the recipe training/bcss.toml"``; ``fix`` how to
    change it). Neither: ConfigError saying what to add. Then the masks must hold no label above K
    (DataError naming the mask, its label and the class list). Returns the folder's set (its names,
    and its colours where it gave them, else ``named``'s)."""
    folder = Path(folder)
    found = None if classes else _class_file(folder)
    own = parse_class_names(classes) if classes else (found[0] if found else None)
    origin = "--classes" if classes else (str(found[1]) if found else "")
    if own is not None and named is not None:
        if [n.casefold() for n in own.names] != [n.casefold() for n in named.names]:
            raise ConfigError(f"{origin} names {_listing(own)} but {named_by} names {_listing(named)} for labels "
                              f"1..K; make them agree: {fix}")
        if not classes and not (found and found[2]):
            own = ClassSet(name=own.name, names=own.names, colors=named.colors)  # the folder gave no colours
    chosen = own or named
    if chosen is None:
        raise ConfigError(f"{folder}: no class names for its labels: write {folder / CLASSES_JSON} holding the names "
                          f"of labels 1..K in order (e.g. [\"tumour\", \"stroma\", \"fat\"]) or pass --classes "
                          f"tumour,stroma,fat; {named_by} names none for a dataset folder")
    top, where = label_range(folder, csv=csv, label_shift=label_shift)
    if top > chosen.num_classes:
        by = origin or named_by
        shifted = f" (after label_shift = {label_shift})" if label_shift else ""
        raise DataError(f"{where}: label {top}{shifted} in the masks of {folder}, but {by} names {_listing(chosen)}, "
                        f"labels 1..{chosen.num_classes} (0 = ignore); name every class of the masks in order"
                        + ("" if origin else f", or {fix}"))
    return chosen


def recipe_class_set(data: DataConfig) -> ClassSet | None:
    """The classes a recipe names for a dataset folder: ``class_names`` or a named set; None for a
    synthetic recipe (its classes are the generator's, not a folder's) or ``classes = ""``."""
    if data.kind == "synthetic" or (not data.class_names and not data.classes):
        return None
    return class_set_for(data)


def folder_config(base, folder, *, classes=None):
    """``base`` (a TrainConfig) pointed at the SAM-Path ``folder`` (img/, mask/, a CSV img_id,fold)
    with the folder's class list, checked against the classes the recipe names
    (:func:`resolve_folder_classes`)."""
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise DataError(f"{folder}: --data folder not found (expected img/, mask/ and a CSV img_id,fold)")
    for sub in ("img", "mask"):
        if not (folder / sub).is_dir():
            raise DataError(f"{folder}: no {sub}/ folder; expected the SAM-Path layout img/, mask/, <split>.csv")
    recipe = f"the recipe {base.source}" if base.source else "the recipe"
    chosen = resolve_folder_classes(
        folder, recipe_class_set(base.data), named_by=recipe, classes=classes, csv=base.data.csv,
        label_shift=base.data.label_shift,
        fix=f"remove [data] classes / class_names from {base.source or 'the recipe'} (or set classes = \"\") to "
            "use the folder's, or correct the folder's list, or use a recipe made for this dataset "
            "(training/custom.toml takes the folder's classes)",
    )
    logger.info("%s: classes %s", folder, ", ".join(chosen.names))
    return base.replace(data={"kind": "sampath", "root": str(folder), "classes": "custom",
                              "class_names": chosen.names, "class_colors": chosen.colors})
