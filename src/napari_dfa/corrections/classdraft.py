"""The class list a pathologist is editing (no Qt): :class:`ClassDraft`.

It starts as the model's classes; add, rename, recolour and remove classes on it, and it knows what
changed against the model — whether anything did, which of the model's classes now go by another
name (they keep what they learned), where each of the model's labels goes in the new list — and
what teaching the list means: the keyword arguments of a fine-tuning, or the model with the list
at once (:func:`napari_dfa.model.classes_edit.with_classes`, no training). The Fine-tune widget
shows a draft and makes the correction store and its layers follow it.
"""

from __future__ import annotations

import numpy as np

from ..classes import default_colors
from ..errors import DataError
from .guard import label_map


def _rgb(color) -> tuple[int, int, int]:
    return tuple(int(v) for v in color[:3])


class ClassDraft:
    """Class names and colours in label order (labels 1..K of the corrections) being edited
    against the model's own list.

    Arguments:
      names / colors: the model's classes; the draft starts as them.

    Attributes:
      renames: ``{the model's name: the name in the draft}`` of every model class renamed (one
        renamed back to its own name is not listed).
    """

    def __init__(self, names=(), colors=()):
        self.model_names = [str(n) for n in names]
        self.model_colors = [tuple(c) for c in colors]
        self._classes = [[n, c] for n, c in zip(self.model_names, self.model_colors)]
        self.renames: dict[str, str] = {}

    @classmethod
    def of(cls, segmenter) -> ClassDraft:
        """The draft of ``segmenter``'s classes (an empty one for None: no model yet)."""
        return cls() if segmenter is None else cls(segmenter.class_names, segmenter.class_colors)

    def names(self) -> list[str]:
        return [n for n, _ in self._classes]

    def colors(self) -> list[tuple[int, int, int]]:
        return [tuple(c) for _, c in self._classes]

    def color_of(self, name: str) -> tuple[int, int, int]:
        return tuple(self._classes[self._index(name)][1])

    @property
    def changed(self) -> bool:
        """Whether the list differs from the model's (names, order or colours)."""
        return self.names() != self.model_names or self.colors() != self.model_colors

    def _index(self, name: str) -> int:
        names = self.names()
        if name not in names:
            raise DataError(f"There is no class {name!r}.")
        return names.index(name)

    def _taken(self, name: str) -> bool:
        return name.lower() in [n.lower() for n in self.names()]

    # --- edits: each raises DataError (the reason in plain words) and changes nothing when refused
    def add(self, name: str, color=None) -> str:
        """Add a class at the end (a new label); returns its name, stripped. Without ``color`` it
        gets the hue farthest from the colours in use."""
        name = str(name).strip()
        if not name:
            raise DataError("A class needs a name.")
        if self._taken(name):
            raise DataError(f"There is a class {name!r} already.")
        if color is None:
            used = np.array(self.colors() or [(0, 0, 0)], float)
            candidates = default_colors(max(12, 2 * (len(self._classes) + 1)))
            color = max(candidates, key=lambda c: np.min(np.linalg.norm(used - np.array(c, float), axis=1)))
        self._classes.append([name, _rgb(color)])
        return name

    def rename(self, old: str, new: str) -> str:
        """Rename ``old`` to ``new`` (returned, stripped). A class of the model keeps its learned
        token under the new name, however often it is renamed; renamed back, it is no rename."""
        new = str(new).strip()
        i = self._index(old)
        if not new or (self._taken(new) and new.lower() != old.lower()):
            raise DataError(f"Cannot rename {old!r} to {new!r}: the name is empty or taken.")
        self._classes[i][0] = new
        original = next((k for k, v in self.renames.items() if v == old), old)
        if original in self.model_names:
            self.renames[original] = new
            if original == new:
                del self.renames[original]
        return new

    def recolor(self, name: str, color) -> None:
        self._classes[self._index(name)][1] = _rgb(color)

    def check_removable(self, name: str) -> None:
        """DataError when ``name`` cannot be removed: not in the list, or the last class."""
        self._index(name)
        if len(self._classes) == 1:
            raise DataError("The last class cannot be removed.")

    def remove(self, name: str) -> None:
        """Drop the class (the model's class of that name, if any, is dropped with it)."""
        self.check_removable(name)
        del self._classes[self._index(name)]
        self.renames = {k: v for k, v in self.renames.items() if v != name}

    def adopt(self, names) -> list[str]:
        """Add the classes of ``names`` the list lacks (by name, case aside), each with a hue of its
        own; returns those added."""
        have = {n.lower() for n in self.names()}
        extra = [n for n in names if n.lower() not in have]
        for n in extra:
            self._classes.append([n, default_colors(len(self._classes) + 1)[-1]])
        return extra

    def bind(self, store) -> list[str]:
        """Make a :class:`~.store.CorrectionStore` follow the list: its labels are renumbered by
        name. Corrections of a class the list lacks are not reinterpreted nor dropped: that class
        is added to the list first (returned, so that the user is told)."""
        names = self.names()
        if store.class_names == names or not names:
            return []
        used = {n for n, px in store.counts_by_name(include_hidden=True).items() if px}
        extra = self.adopt([n for n in store.class_names if n in used])
        store.remap_classes(self.names())
        return extra

    # --- what changed, and teaching it ----------------------------------------------------------
    def label_map(self) -> np.ndarray:
        """Look-up table: the model's label → the label of its class in the draft (0: removed)."""
        return label_map(self.model_names, self.names(), self.renames)

    def edit(self) -> dict:
        """The keyword arguments that teach the list at the next fine-tuning
        (:func:`~.workflow.finetune_on_corrections`); empty when it is the model's."""
        if not self.changed:
            return {}
        return dict(class_names=self.names(), class_colors=self.colors(), renames=dict(self.renames) or None)

    def apply(self, segmenter, corrected: dict[str, int] | None = None):
        """A copy of ``segmenter`` with this class list, no training: renamed and recoloured
        classes keep what they learned, removed ones are dropped, a new class gets a token of its
        own, its bias warm-started from ``corrected`` (corrected pixels per class name)."""
        from ..model.classes_edit import with_classes

        new = {n: c for n, c in (corrected or {}).items() if n not in segmenter.class_names}
        return with_classes(segmenter, self.names(), self.colors(), renames=dict(self.renames) or None,
                            corrected_frequencies=new or None)
