"""Class lists of the supported benchmarks and of the synthetic data.

Label convention everywhere in napari-dfa: 0 is the ignore label (outside the ROI, unlabelled,
background glass in predictions); classes are 1..K. A model has K output channels; channel k is
label k + 1.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass


def default_colors(k: int) -> list[tuple[int, int, int]]:
    """K evenly spaced hues, for classes that came without colours."""
    return [tuple(int(255 * v) for v in colorsys.hsv_to_rgb(i / max(k, 1), 0.7, 0.95)) for i in range(k)]


MAX_CLASSES = 255  # labels are 8-bit and 0 is "no class"
MAX_NAME_CHARS = 256  # what a checkpoint accepts (napari_dfa.model.validate)


def check_class_names(names, *, what: str = "the class list") -> list[str]:
    """``names`` stripped, refused (DataError naming ``what``) when empty, with an empty name, a
    name twice (case-insensitive), more than :data:`MAX_CLASSES` names or a name longer than
    :data:`MAX_NAME_CHARS`: the one check of a class list a user typed, edited or a dataset
    gave, made before any training (a checkpoint would refuse it only once written)."""
    from .errors import DataError

    names = [str(n).strip() for n in names]
    if not names:
        raise DataError(f"{what} is empty: give at least one class name")
    if any(not n for n in names):
        where = ", ".join(str(i + 1) for i, n in enumerate(names) if not n)
        raise DataError(f"{what}: an empty class name (class {where}); give names separated by commas")
    if len(names) > MAX_CLASSES:
        raise DataError(f"{what}: {len(names)} classes; labels are 8-bit, so at most {MAX_CLASSES} classes")
    long = [n for n in names if len(n) > MAX_NAME_CHARS]
    if long:
        raise DataError(f"{what}: a class name longer than {MAX_NAME_CHARS} characters ({long[0][:40]!r}...)")
    lowered = [n.lower() for n in names]
    dup = sorted({n for n in names if lowered.count(n.lower()) > 1})
    if dup:
        raise DataError(f"{what}: class names must be unique (case-insensitive); repeated: {', '.join(dup)}")
    return names


@dataclass(frozen=True)
class ClassSet:
    """Names and display colours of the K classes of a dataset (label ids 1..K)."""

    name: str
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]

    def __post_init__(self):
        if len(self.names) != len(self.colors):
            raise ValueError("ClassSet: one colour per class name is required")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @classmethod
    def of(cls, classes, colors=None, *, name: str = "") -> "ClassSet":
        """A ClassSet from a ClassSet (returned as is) or from names with optional colours (missing
        colours get :func:`default_colors`): the one place parallel name/colour lists become a set."""
        if isinstance(classes, ClassSet):
            return classes
        names = tuple(str(n) for n in classes)
        cols = [tuple(int(v) for v in c)[:3] for c in (colors or [])][: len(names)]
        if len(cols) < len(names):
            cols += default_colors(len(names))[len(cols):]
        return cls(name=name, names=names, colors=tuple(cols))

    def label_of(self, name: str) -> int:
        """Label id (1..K) of a class name, case-insensitive."""
        lowered = [n.lower() for n in self.names]
        try:
            return lowered.index(name.lower()) + 1
        except ValueError:
            raise KeyError(f"unknown class {name!r}; known classes: {', '.join(self.names)}") from None


# BCSS as prepared in the SAM-Path layout (0 = outside ROI / ignore). The synthetic generator
# uses the same class ids so a model trained on either reads the same. Stroma is green (QuPath's
# stroma is green too): the eosin pink it had before, painted at half opacity over pink stroma,
# read as unlabelled H&E (labels/palette.py: looks_like_he). Only this default changed; a model or
# class list saved with its own colours keeps them.
BCSS = ClassSet(
    name="bcss",
    names=("inflammatory", "tumour", "stroma", "other", "necrosis"),
    colors=((60, 110, 255), (230, 40, 40), (0, 170, 70), (160, 160, 160), (240, 200, 40)),
)

SYNTHETIC = ClassSet(name="synthetic", names=BCSS.names, colors=BCSS.colors)

# CRAG: colorectal glands against everything else.
CRAG = ClassSet(name="crag", names=("background", "gland"), colors=((200, 200, 200), (40, 170, 80)))

# BDSA (brain tumour tissue) as a generic 4-class set; point a recipe at your copy's own list
# with `classes = [...]` in the TOML if it differs.
BDSA = ClassSet(
    name="bdsa",
    names=("background", "tumour", "necrosis", "other"),
    colors=((200, 200, 200), (230, 40, 40), (240, 200, 40), (90, 120, 200)),
)

CLASS_SETS = {c.name: c for c in (BCSS, SYNTHETIC, CRAG, BDSA)}
