"""What a fine-tune on corrections did, for the review (no Qt): :class:`FinetuneOutcome` — the
verdict, the areas before → after, what changed and where to look next, whether it may be accepted
and accepting it, the CLI's JSON report."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from .guard import GuardVerdict

if TYPE_CHECKING:
    from ..training import FinetuneResult


@dataclass
class FinetuneOutcome:
    """What :func:`finetune_on_corrections` did.

    Arguments:
      result: the :class:`~napari_dfa.training.FinetuneResult` (losses, held-out scores, the copy).
      verdict: the guard's :class:`~.guard.GuardVerdict` (status, reason in plain words, numbers).
      kept: whether the fine-tuned model is the one to use now (the guard promoted it, the user
        confirmed a model the guard could not test, or the guard was off).
      segmenter: the model to use from now on: the fine-tuned copy when kept, else the input model.
      candidate: the fine-tuned copy, kept or not (a widget offers it for review).
      class_names / old_names: the new and the old model's classes; ``label_map`` maps old labels
        onto new ones by class name (0: a class the new model lacks).
      before: the reviewed region's labels before (old class numbers), when known.
      relabelled: the region segmented again with the new model (None when not asked).
      written_back: the labels store the relabelled region was written into, or None.
      seconds: wall time of the whole call.
    """

    result: FinetuneResult
    verdict: GuardVerdict
    kept: bool
    segmenter: Any
    candidate: Any = None
    class_names: list[str] = field(default_factory=list)
    old_names: list[str] = field(default_factory=list)
    label_map: np.ndarray | None = None
    before: np.ndarray | None = None
    relabelled: np.ndarray | None = None
    written_back: Path | None = None
    seconds: float = 0.0
    guard: bool = True

    @property
    def promoted(self) -> bool:
        """The guard's verdict: the new model passed every check."""
        return self.verdict.promoted

    @property
    def needs_confirmation(self) -> bool:
        """Nothing speaks against the new model, but too little could be held out to test it."""
        return self.verdict.needs_confirmation

    @property
    def acceptable(self) -> bool:
        """Whether the candidate may be accepted: the guard promoted it, could not test it (the
        user decides), or was off. A model the guard rejected is not offered."""
        return self.promoted or self.needs_confirmation or not self.guard

    def accept(self):
        """Keep the candidate: it is the model to use from now on, and its provenance says it was
        kept (``confirmed``: by the user, where the guard could not test it). Returns it; DataError
        when it is not :attr:`acceptable`."""
        if not self.acceptable:
            raise DataError(f"The guard rejected this model, which cannot be accepted: {self.verdict.reason}")
        guard = self.candidate.metadata.setdefault("provenance", {}).setdefault("guard", {})
        guard["kept"] = True
        guard["confirmed"] = bool(self.needs_confirmation)
        self.kept, self.segmenter = True, self.candidate
        return self.candidate

    @property
    def old_score(self) -> float:
        return self.result.old_score

    @property
    def new_score(self) -> float:
        return self.result.new_score

    @property
    def scores(self) -> str:
        """``held-out score 0.512 → 0.634`` (``n/a`` when nothing was held out)."""
        return f"held-out score {format_score(self.old_score)} → {format_score(self.new_score)}"

    @property
    def message(self) -> str:
        """What happened, in plain words."""
        if self.verdict.promoted:
            return f"Fine-tuned ({self.scores}). {self.verdict.reason}"
        if self.kept and not self.guard:
            return f"Using the fine-tuned model although the guard said: {self.verdict.reason}"
        if self.kept:
            return f"Using the fine-tuned model, as you confirmed. {self.verdict.reason}"
        if self.verdict.needs_confirmation:
            return self.verdict.reason
        return self.verdict.reason

    def changed(self) -> np.ndarray | None:
        """h×w bool: where the relabelled region differs from the labels before (by class name)."""
        if self.before is None or self.relabelled is None or self.before.shape != self.relabelled.shape:
            return None
        lut = self.label_map if self.label_map is not None else np.arange(256, dtype=np.uint8)
        return lut[np.asarray(self.before)] != np.asarray(self.relabelled)

    def look_next(self, n: int = 5, min_pixels: int = 64) -> list[tuple[int, int, int, int, int]]:
        """Where to look next: the ``n`` largest connected areas where the new labels differ from
        the old ones in the reviewed region, as ``(y0, x0, h, w, changed pixels)`` in region pixels,
        largest first (areas under ``min_pixels`` are left out). Each is one click for the
        pathologist: confirm it, or paint what is wrong."""
        from scipy import ndimage

        changed = self.changed()
        if changed is None or not changed.any():
            return []
        lab, count = ndimage.label(changed, structure=np.ones((3, 3), bool))
        sizes = np.bincount(lab.ravel(), minlength=count + 1)[1:]
        boxes = ndimage.find_objects(lab)
        out = []
        for i in np.argsort(sizes)[::-1][:n]:
            if sizes[i] < min_pixels:
                break
            ys, xs = boxes[i]
            out.append((ys.start, xs.start, ys.stop - ys.start, xs.stop - xs.start, int(sizes[i])))
        return out

    def class_changes(self, threshold: float = 0.25) -> list[str]:
        """``"necrosis 14.5 % → 0.1 %"`` for every class whose share of the reviewed region changes
        by more than ``threshold`` of itself (or appears or vanishes): what Accept would do."""
        rows = self.area_table()
        tb, ta = max(1, sum(b for _, b, _ in rows)), max(1, sum(a for _, _, a in rows))
        out = []
        for name, b, a in rows:
            fb, fa = b / tb, a / ta
            if abs(fa - fb) > threshold * max(fb, fa) and abs(fa - fb) > 0.001:
                out.append(f"{name} {100 * fb:.1f} % → {100 * fa:.1f} %")
        return out

    def area_table(self) -> list[tuple[str, int, int]]:
        """``[(class name, pixels before, pixels after)]`` over the reviewed region, classes of the
        new model first, then classes the old model had and the new one lacks (after = 0)."""
        if self.before is None or self.relabelled is None:
            return []
        k = len(self.class_names)
        lut = self.label_map if self.label_map is not None else np.arange(256, dtype=np.uint8)
        before = np.bincount(lut[np.asarray(self.before)].ravel(), minlength=k + 1)
        after = np.bincount(np.asarray(self.relabelled).ravel(), minlength=k + 1)
        rows = [(n, int(before[i + 1]), int(after[i + 1])) for i, n in enumerate(self.class_names)]
        if self.label_map is not None:
            old_counts = np.bincount(np.asarray(self.before).ravel(), minlength=len(self.label_map))
            for v in range(1, len(self.label_map)):
                if self.label_map[v] == 0 and old_counts[v]:
                    name = self.old_names[v - 1] if v <= len(self.old_names) else f"class {v}"
                    rows.append((name, int(old_counts[v]), 0))
        return rows

    @property
    def method_chosen(self) -> str | None:
        """Why ``method="auto"`` learnt the way it did (None when the method was asked for)."""
        cand = getattr(self, "candidate", None)
        return ((getattr(cand, "metadata", None) or {}).get("provenance") or {}).get("method_chosen")

    def report(self) -> dict:
        """JSON-ready: what ``napari-dfa finetune --json`` writes."""
        r = self.result
        v = self.verdict.as_dict()
        return {
            "promoted": bool(self.verdict.promoted), "kept": bool(self.kept), "status": self.verdict.status,
            "reason": self.verdict.reason, "class_names": list(self.class_names),
            "corrected_pixels": dict(r.corrected_per_class), "held_out_pixels": dict(r.held_out_per_class),
            "held_out_scores": {n: {"old": r.old_class_scores.get(n), "new": r.new_class_scores.get(n)}
                                for n in r.old_class_scores},
            "held_out_mean": {"old": _num(r.old_score), "new": _num(r.new_score)},
            "held_out_too_few": dict(r.too_few),
            "agreement_outside_corrections": v["agreement_outside_corrections"],
            "regions": v["regions"],
            "class_shares": v["class_shares"], "problems": v["problems"],
            "method": r.method, "method_chosen": self.method_chosen, "other_method": r.alternative, "steps": int(r.steps), "frozen_encoder": bool(r.frozen_encoder), "crop": int(r.crop),
            "look_next": [{"region": [y, x, h, w], "changed_pixels": px} for y, x, h, w, px in self.look_next()],
            "train_seconds": round(float(r.seconds), 2), "seconds": round(float(self.seconds), 2),
        }


def next_version(labels: Iterable[str], kind: str) -> str:
    """The label of the next model version of ``kind`` (``"fine-tune"``, ``"classes"``): ``"kind n"``,
    ``n`` one more than the versions of that kind among ``labels``."""
    pattern = re.compile(re.escape(kind) + r" \d+")
    return f"{kind} {sum(1 for label in labels if pattern.fullmatch(label)) + 1}"


def _num(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def format_score(value) -> str:
    """A held-out score with three decimals; ``n/a`` for None or NaN (nothing held out)."""
    try:
        v = None if value is None else float(value)
    except (TypeError, ValueError):
        v = None
    return "n/a" if v is None or math.isnan(v) else f"{v:.3f}"
