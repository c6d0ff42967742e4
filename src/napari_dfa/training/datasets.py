"""Datasets in the SAM-Path layout and the synthetic stand-in, plus the torch views the trainer uses.

SAM-Path layout (BCSS, CRAG, BDSA as SAM-Path and the DFA reference code prepare them)::

    <root>/img/<img_id>.png     RGB tiles (png, jpg, tif)
    <root>/mask/<img_id>.png    integer labels, 0 = ignore / outside ROI, 1..K classes
    <root>/<name>.csv           header ``img_id,fold``: -1 test, 0 validation, >=1 train

The synthetic data (:mod:`napari_dfa.synth`) is written once in the same layout into a cache
folder keyed by its settings, so every bias mode of a benchmark sees the very same tiles.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..classes import CLASS_SETS, ClassSet, check_class_names, default_colors
from ..errors import ConfigError, DataError
from .augment import augment, center_crop, rng_for
from .config import AugmentConfig, DataConfig

logger = logging.getLogger(__name__)

SPLITS = {"train": lambda f: f >= 1, "val": lambda f: f == 0, "test": lambda f: f == -1}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
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


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header, as :func:`read_rgb` would read it."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagelength), int(page.imagewidth)
        from PIL import Image

        with Image.open(path) as im:
            return int(im.height), int(im.width)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a data problem
        raise DataError(f"{path}: cannot read the image ({exc})") from None


def read_rgb(path: Path) -> np.ndarray:
    """An RGB uint8 image; DataError naming the file otherwise. Greyscale has its channel
    repeated; transparency (RGBA, grey + alpha) is laid over white, the colour of glass, not
    dropped (what lay under transparent pixels, often black, is not tissue). See
    :func:`image_kind` for saying so before scoring."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                if "A" in im.getbands() or "transparency" in im.info:
                    im = im.convert("RGBA")
                elif im.mode not in ("RGB", "L"):
                    im = im.convert("RGB")
                arr = np.array(im)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a data problem
        raise DataError(f"{path}: cannot read the image ({exc})") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (2, 3, 4):
        raise DataError(f"{path}: expected an RGB image, got shape {arr.shape}")
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise DataError(f"{path}: unsupported pixel type {arr.dtype}; expected 8-bit RGB")
    if arr.shape[2] in (2, 4):  # grey + alpha, RGBA: over white
        alpha = arr[..., -1:].astype(np.float32) / 255.0
        colour = arr[..., :-1].astype(np.float32)
        colour = np.repeat(colour, 3, axis=2) if colour.shape[2] == 1 else colour
        arr = np.round(colour * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


def image_kind(path: Path) -> str:
    """``"rgb"``, ``"grey"`` or ``"rgba"`` (transparency) from the file's header (nothing decoded):
    what :func:`read_rgb` converts, for commands that say so."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                samples = int(page.samplesperpixel)
                if samples in (2, 4):
                    return "rgba"
                return "grey" if samples == 1 else "rgb"
        from PIL import Image

        with Image.open(path) as im:
            if "A" in im.getbands() or "transparency" in im.info:
                return "rgba"
            return "grey" if im.mode in ("L", "1", "I", "I;16", "F") else "rgb"
    except Exception:  # noqa: BLE001 - unreadable: read_rgb names it when it is read
        return "rgb"


def _label_image(path: Path) -> np.ndarray:
    """The 2-D integer labels of a mask file; DataError naming the file otherwise."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                if im.mode not in ("L", "P", "I", "I;16", "1"):
                    raise DataError(f"{path}: mask must be a single-channel label image, got mode {im.mode}")
                arr = np.array(im)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot read the mask ({exc})") from None
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise DataError(f"{path}: mask must be 2-D integer labels, got shape {arr.shape}")
    return arr


def read_mask(path: Path, *, num_classes: int, label_shift: int = 0) -> np.ndarray:
    """A uint8 label mask with values 0..K; an unknown class id raises DataError naming the file."""
    arr = _label_image(path).astype(np.int64) + label_shift
    if arr.min() < 0 or arr.max() > num_classes:
        bad = sorted(set(np.unique(arr).tolist()) - set(range(num_classes + 1)))
        raise DataError(
            f"{path}: unknown class id(s) {bad[:10]} (after label_shift={label_shift}); this dataset has "
            f"labels 0 (ignore) and 1..{num_classes}. Check the recipe's [data] classes / label_shift."
        )
    return arr.astype(np.uint8)


def _find(folder: Path, img_id: str) -> Path | None:
    for ext in IMAGE_EXTS:
        p = folder / f"{img_id}{ext}"
        if p.is_file():
            return p
    return None


def read_split_csv(path: Path) -> list[tuple[str, int]]:
    """``(img_id, fold)`` rows of a SAM-Path CSV; DataError naming the file when malformed."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            if "img_id" not in fields or "fold" not in fields:
                raise DataError(f"{path}: the CSV needs the columns img_id,fold; found {fields or 'no header'}")
            rows = []
            for i, row in enumerate(reader, start=2):
                row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
                try:
                    rows.append((row["img_id"], int(float(row["fold"]))))
                except ValueError:
                    raise DataError(f"{path}: line {i}: fold {row['fold']!r} is not an integer") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the split CSV ({exc})") from None
    return rows


def find_csv(root: Path, name: str = "") -> Path:
    if name:
        p = Path(name) if Path(name).is_absolute() else root / name
        if not p.is_file():
            raise DataError(f"{p}: split CSV not found (set [data] csv to the file holding img_id,fold)")
        return p
    found = sorted(root.glob("*.csv")) or sorted((root / "dataset_cfg").glob("*.csv"))
    if not found:
        raise DataError(f"{root}: no split CSV (img_id,fold) in the dataset folder")
    if len(found) > 1:
        raise DataError(f"{root}: several CSV files ({', '.join(p.name for p in found)}); set [data] csv")
    return found[0]


class SamPathDataset:
    """One split of a dataset in the SAM-Path layout; items are ``(rgb uint8 H×W×3, mask uint8 H×W)``.

    Arguments:
      root: dataset folder holding ``img/``, ``mask/`` and the split CSV.
      split: ``"train"`` (fold >= 1), ``"val"`` (fold 0) or ``"test"`` (fold -1).
      class_set: the K classes (labels 1..K).
      csv: CSV name inside ``root`` (empty: the only CSV there).
      label_shift: added to mask values (for copies whose 0 is a real class).
      cache: keep decoded pairs in memory after the first read.
    """

    def __init__(self, root, *, split: str, class_set: ClassSet, csv: str = "", label_shift: int = 0, cache: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder not found; pass --data <folder with img/, mask/ and a CSV>")
        for sub in ("img", "mask"):
            if not (self.root / sub).is_dir():
                raise DataError(f"{self.root}: no {sub}/ folder; expected the SAM-Path layout img/, mask/, <split>.csv")
        if split not in SPLITS:
            raise ConfigError(f"split {split!r}; choose train, val or test")
        self.split = split
        self.class_set = class_set
        self.num_classes = class_set.num_classes
        self.label_shift = label_shift
        self.csv_path = find_csv(self.root, csv)
        rows = read_split_csv(self.csv_path)
        self.ids = [i for i, fold in rows if SPLITS[split](fold)]
        self.items = []
        for img_id in self.ids:
            img, mask = _find(self.root / "img", img_id), _find(self.root / "mask", img_id)
            if img is None or mask is None:
                missing = "img" if img is None else "mask"
                raise DataError(f"{self.csv_path}: {img_id!r} is listed but {self.root / missing}/{img_id}.* is missing")
            self.items.append((img, mask))
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        img_path, mask_path = self.items[i]
        rgb = read_rgb(img_path)
        mask = read_mask(mask_path, num_classes=self.num_classes, label_shift=self.label_shift)
        if rgb.shape[:2] != mask.shape:
            raise DataError(f"{mask_path}: mask is {mask.shape} but its image {img_path.name} is {rgb.shape[:2]}")
        if self._cache is not None:
            self._cache[i] = (rgb, mask)
        return rgb, mask

    def shorter_sides(self) -> list[int]:
        """Each image's shorter side in pixels: from pairs already decoded, else from the file's
        header (nothing decoded: a split read with ``cache=False`` is not decoded twice)."""
        sides = []
        for i, (img_path, _) in enumerate(self.items):
            if self._cache is not None and i in self._cache:
                sides.append(min(self._cache[i][0].shape[:2]))
            else:
                sides.append(min(image_size(img_path)))
        return sides

    def pixel_counts(self) -> np.ndarray:
        """Per-class pixel counts (labels 1..K) over the split, ignore excluded."""
        counts = np.zeros(self.num_classes + 1, dtype=np.int64)
        for i in range(len(self)):
            counts += np.bincount(self[i][1].reshape(-1), minlength=self.num_classes + 1)[: self.num_classes + 1]
        return counts[1:]


def class_frequencies(dataset: SamPathDataset) -> np.ndarray:
    """f_c: pixel share of each class over the non-ignored pixels of ``dataset`` (K floats)."""
    counts = dataset.pixel_counts().astype(np.float64)
    if counts.sum() == 0:
        raise DataError(f"{dataset.root}: the {dataset.split} split has no labelled pixel (every mask is 0)")
    return counts / counts.sum()


# -- a dataset folder's own class names ----------------------------------------------------------------
# One reader for train, evaluate and bench: a model must never carry another dataset's names (a BCSS
# recipe's "inflammatory" on a folder whose label 1 is fat), so a folder says what its labels are, the
# recipe or model must agree, and a disagreement stops before any training.


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
        path = _find(root / "mask", img_id)
        if path is None:
            continue
        high = int(_label_image(path).max()) + label_shift
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


def synthetic_root(data: DataConfig) -> Path:
    """Generate the synthetic dataset of ``data`` once (atomically) and return its folder."""
    from .. import synth
    from ..files.paths import cache_dir

    settings = {
        "n": [data.synth_n_train, data.synth_n_val, data.synth_n_test],
        "tile": data.synth_tile,
        "seed": data.synth_seed,
        "synth": data.synth,
    }
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(data.root) if data.root else cache_dir() / "synthetic" / key
    if (root / ".complete").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        cfg = synth.SynthConfig.from_dict(dict(data.synth)) if data.synth else synth.SynthConfig()
        logger.info("generating the synthetic dataset into %s", root)
        synth.write_dataset(
            tmp, cfg, n_train=data.synth_n_train, n_val=data.synth_n_val, n_test=data.synth_n_test,
            tile=data.synth_tile, seed=data.synth_seed,
        )
        (tmp / "settings.json").write_text(json.dumps(settings, sort_keys=True))
        (tmp / ".complete").touch()
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # an empty folder the user made for it
        try:
            os.replace(tmp, root)
        except OSError:
            pass  # another process (a DDP rank) finished first: use its copy
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not (root / ".complete").is_file():
        raise DataError(f"{root}: synthetic dataset generation did not complete; delete the folder and retry")
    return root


def open_split(data: DataConfig, split: str, *, root: str | Path | None = None) -> SamPathDataset:
    """The ``split`` of the recipe's data (``root`` overrides ``[data] root``, like ``--data``)."""
    class_set = class_set_for(data)
    if root is None:
        if data.kind == "synthetic":
            root = synthetic_root(data)
        elif not data.root:
            raise DataError("no dataset folder: pass --data <folder in the SAM-Path layout> or set [data] root")
        else:
            root = data.root
    return SamPathDataset(root, split=split, class_set=class_set, csv=data.csv, label_shift=data.label_shift, cache=data.cache)


class TrainTiles(torch.utils.data.Dataset):
    """Augmented training crops; call :meth:`set_epoch` so augmentation follows (seed, epoch, index).

    Returns ``(image uint8 H×W×3 tensor, mask int64 H×W tensor)``.
    """

    def __init__(self, base, *, crop: int, augment_config: AugmentConfig, seed: int):
        self.base, self.crop, self.augment_config, self.seed = base, crop, augment_config, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        # (epoch, index) keys come from EpochSampler: the epoch travels with the index, so
        # persistent DataLoader workers (which hold a copy of this object) augment correctly.
        # (epoch, index, crop, stream) keys come from MultiCropBatchSampler: the crop size of the
        # batch, and the stream (which size) so one tile's crops of two sizes are augmented apart.
        crop, stream = self.crop, 0
        if isinstance(key, tuple) and len(key) == 4:
            epoch, i, crop, stream = key
        else:
            epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        rgb, mask = self.base[i]
        index = i + stream * len(self.base)  # stream 0 (and a single crop) keeps the plain index
        rgb, mask = augment(rgb, mask, rng_for(self.seed, epoch, index), config=self.augment_config, crop=crop)
        return torch.from_numpy(rgb), torch.from_numpy(mask.astype(np.int64))


class MultiCropBatchSampler(torch.utils.data.Sampler):
    """Batches of several crop sizes (``[data] crops``): per epoch one pass per size over the tiles
    at least that large (smaller ones would be padded with glass-like white), shuffled from
    ``(seed, epoch, size)``, each rank taking every world-th tile as DistributedSampler does. The
    sizes' batches are interleaved evenly over the epoch, so a cosine schedule treats them alike.
    Yields lists of ``(epoch, index, crop, stream)`` keys for :class:`TrainTiles`.
    """

    def __init__(self, sides, *, crops, batch_sizes, seed: int, rank: int = 0, world_size: int = 1):
        self.crops, self.batch_sizes = list(crops), list(batch_sizes)
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.eligible = [np.flatnonzero(np.asarray(sides) >= c) for c in self.crops]
        for c, idx in zip(self.crops, self.eligible):
            if not len(idx):
                raise DataError(f"[data] crops: no training tile is at least {c} px on its shorter side; "
                                f"use smaller crops (the largest tile side is {int(max(sides, default=0))} px)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _per_rank(self, k: int) -> int:
        return -(-len(self.eligible[k]) // self.world_size)

    def _batches(self, k: int) -> int:
        return -(-self._per_rank(k) // self.batch_sizes[k])

    def __len__(self):
        return sum(self._batches(k) for k in range(len(self.crops)))

    def __iter__(self):
        epoch, streams = self.epoch, []
        for k, (crop, idx) in enumerate(zip(self.crops, self.eligible)):
            g = torch.Generator()
            g.manual_seed(self.seed + 1000003 * epoch + 7919 * k)
            order = idx[torch.randperm(len(idx), generator=g).numpy()]
            n = self._per_rank(k) * self.world_size
            order = np.concatenate([order, order[: n - len(order)]])  # pad as DistributedSampler does
            mine = order[self.rank::self.world_size]
            b = self.batch_sizes[k]
            batches = [[(epoch, int(i), crop, k) for i in mine[j:j + b]] for j in range(0, len(mine), b)]
            streams += [((j + 0.5) / len(batches), k, batch) for j, batch in enumerate(batches)]
        streams.sort(key=lambda t: (t[0], t[1]))
        return (batch for _, _, batch in streams)


class EpochSampler(torch.utils.data.Sampler):
    """Wraps a sampler with ``set_epoch`` (e.g. DistributedSampler) and yields ``(epoch, index)``."""

    def __init__(self, sampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, int(i)) for i in self.sampler)

    def __len__(self):
        return len(self.sampler)


class EvalTiles(torch.utils.data.Dataset):
    """Un-augmented pairs for validation/testing: full images, or a centre crop of ``crop``."""

    def __init__(self, base, *, crop: int = 0):
        self.base, self.crop = base, crop

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        rgb, mask = self.base[i]
        if self.crop:
            rgb, mask = center_crop(rgb, mask, self.crop)
        return torch.from_numpy(np.ascontiguousarray(rgb)), torch.from_numpy(mask.astype(np.int64))


def pad_collate(batch, multiple: int = 32):
    """Stack pairs of different sizes: pad to the batch's largest size rounded up to ``multiple``
    (image with white, mask with the ignore label, so padding never enters loss or metrics)."""
    h = max(img.shape[0] for img, _ in batch)
    w = max(img.shape[1] for img, _ in batch)
    h, w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    imgs = torch.full((len(batch), h, w, 3), 255, dtype=torch.uint8)
    masks = torch.zeros((len(batch), h, w), dtype=torch.int64)
    for j, (img, mask) in enumerate(batch):
        imgs[j, : img.shape[0], : img.shape[1]] = img
        masks[j, : mask.shape[0], : mask.shape[1]] = mask
    return imgs, masks


def write_sampath(root, items, *, csv_name: str = "cv.csv") -> Path:
    """Write ``(img_id, rgb uint8 H×W×3, mask uint8 H×W, fold)`` items in the SAM-Path layout
    (PNG images and masks, ``img_id,fold`` CSV); e.g. to turn corrections into a dataset."""
    from PIL import Image

    root = Path(root)
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "mask").mkdir(parents=True, exist_ok=True)
    rows = []
    for img_id, rgb, mask, fold in items:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(root / "img" / f"{img_id}.png")
        Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(root / "mask" / f"{img_id}.png")
        rows.append((img_id, int(fold)))
    with open(root / csv_name, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["img_id", "fold"])
        writer.writerows(rows)
    return root
