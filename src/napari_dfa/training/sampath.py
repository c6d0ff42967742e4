"""Datasets in the SAM-Path layout (no Qt, no torch): reading one split, and writing one.

SAM-Path layout (BCSS, CRAG, BDSA as SAM-Path and the DFA reference code prepare them)::

    <root>/img/<img_id>.png     RGB tiles (png, jpg, tif)
    <root>/mask/<img_id>.png    integer labels, 0 = ignore / outside ROI, 1..K classes
    <root>/<name>.csv           header ``img_id,fold``: -1 test, 0 validation, >=1 train

A folder's class names (``classes.json``) are read by :mod:`napari_dfa.training.folder_classes`;
the torch views the trainer loads batches through are :mod:`napari_dfa.training.samplers`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..classes import ClassSet
from ..errors import ConfigError, DataError

SPLITS = {"train": lambda f: f >= 1, "val": lambda f: f == 0, "test": lambda f: f == -1}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


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


def label_image(path: Path) -> np.ndarray:
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
    arr = label_image(path).astype(np.int64) + label_shift
    if arr.min() < 0 or arr.max() > num_classes:
        bad = sorted(set(np.unique(arr).tolist()) - set(range(num_classes + 1)))
        raise DataError(
            f"{path}: unknown class id(s) {bad[:10]} (after label_shift={label_shift}); this dataset has "
            f"labels 0 (ignore) and 1..{num_classes}. Check the recipe's [data] classes / label_shift."
        )
    return arr.astype(np.uint8)


def find_image(folder: Path, img_id: str) -> Path | None:
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
            img, mask = find_image(self.root / "img", img_id), find_image(self.root / "mask", img_id)
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
