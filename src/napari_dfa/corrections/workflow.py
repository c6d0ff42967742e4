"""From a pathologist's corrections to a better model, in one headless call (no Qt).

:func:`finetune_on_corrections` runs the whole loop the Fine-tune widget offers:

1. the corrected patches of a slide become training samples (:meth:`CorrectionStore.samples`);
2. optionally the current labels of the reviewed region are replayed beside them, so the model
   does not forget what nobody corrected (:func:`replay_from_prediction`);
3. a copy of the model is fine-tuned (:func:`napari_dfa.training.finetune`), scored against the
   old one on held-out corrections, and kept only if it is not worse (the guard);
4. a kept model records where its corrections came from (provenance);
5. the reviewed region is segmented again with it and, for a whole-slide result, the new labels
   are written into every level of the slide's labels store.

The caller gathers the inputs (which region, which labels) and shows the outcome; a widget does
so on its UI thread and runs this function in a worker, a script simply calls it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from ..labels import LabelsStore
from .replay import replay_from_prediction
from .store import CorrectionStore

if TYPE_CHECKING:
    from ..training import FinetuneResult

logger = logging.getLogger(__name__)

GPU_STEPS = 200
CPU_STEPS = 40


def default_steps() -> int:
    """200 steps with a GPU; 40 on a CPU, where a step of the demo model takes ~0.3 s and 40 show
    a painted correction well within 30 s (benchmarks/bench_gui.py)."""
    import torch

    gpu = torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
    return GPU_STEPS if gpu else CPU_STEPS


def warm_up() -> None:
    """Import and initialise what the first fine-tuning would otherwise load in its worker: the
    first AdamW step imports ~800 modules (torch.distributed), and module initialisation holds the
    GIL, which froze a UI for up to 0.5 s (benchmarks/bench_gui.py). Meant for a background thread."""
    import torch

    from .. import inference, training  # noqa: F401

    p = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.AdamW([p], lr=1e-3)
    (p * 2).sum().backward()
    opt.step()


@dataclass
class ReplaySpec:
    """The reviewed region whose current labels are replayed beside the corrections.

    Arguments:
      level: pyramid level of ``region`` (as ``read_rgb`` takes it).
      region: (y0, x0, h, w) in ``level`` pixels.
      labels: the current labels over the region (h×w uint8), or a function returning them, called
        in the worker (e.g. a read from a zarr labels store).
      corrected: the corrections over the region (h×w, 0 = not corrected): nothing is replayed there.
    """

    level: int
    region: tuple[int, int, int, int]
    labels: np.ndarray | Callable[[], np.ndarray]
    corrected: np.ndarray


@dataclass
class Resegment:
    """What to segment again with a kept model: ``segment(source, model, level=level, region=region)``.

    Arguments:
      source: what :func:`napari_dfa.inference.segment` reads: a Slide or a Y×X×3 array.
      level: the level of ``source`` to read.
      region: (y0, x0, h, w) in pixels of that level.
    """

    source: Any
    level: int
    region: tuple[int, int, int, int]


@dataclass
class WriteBack:
    """Where the segmented-again labels go: a whole-slide labels store written by
    :func:`~napari_dfa.inference.segment`, at ``offset`` (y, x) in its level-0 pixels."""

    store: str | os.PathLike
    offset: tuple[int, int]


@dataclass
class FinetuneOutcome:
    """What :func:`finetune_on_corrections` did.

    Arguments:
      result: the :class:`~napari_dfa.training.FinetuneResult` (losses, held-out scores, the copy).
      kept: whether the fine-tuned model is the one to use now (it scored at least as well on the
        held-out corrections, or the guard was off).
      segmenter: the model to use from now on: the fine-tuned copy when kept, else the input model.
      relabelled: the region segmented again with the kept model (None when not asked or not kept).
      written_back: the labels store the relabelled region was written into, or None.
    """

    result: FinetuneResult
    kept: bool
    segmenter: Any
    relabelled: np.ndarray | None = None
    written_back: Path | None = None

    @property
    def promoted(self) -> bool:
        """The guard's verdict: the fine-tuned model is not worse on held-out corrections."""
        return bool(self.result.promoted)

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
        if not self.kept:
            return (f"Kept the old model: the fine-tuned one scored worse on held-out corrections "
                    f"({self.scores}). Paint more, or untick the guard to use it anyway.")
        return f"Fine-tuned ({self.scores}); the region is segmented again with the new model."


def format_score(value) -> str:
    """A held-out score with three decimals; ``n/a`` for None or NaN (nothing held out)."""
    try:
        v = None if value is None else float(value)
    except (TypeError, ValueError):
        v = None
    return "n/a" if v is None or math.isnan(v) else f"{v:.3f}"


def finetune_on_corrections(segmenter, store: CorrectionStore,
                            read_rgb: Callable[[int, tuple[int, int, int, int]], np.ndarray], *,
                            steps: int | None = None, guard: bool = True, replay: ReplaySpec | None = None,
                            resegment: Resegment | None = None, writeback: WriteBack | None = None,
                            parent_source: str | None = None, slide: str | None = None,
                            progress: Callable | None = None,
                            cancel: Callable[[], bool] | None = None) -> FinetuneOutcome:
    """Fine-tune on every correction saved for a slide, keep the model if it is not worse, and
    segment the reviewed region again with it.

    Arguments:
      segmenter: the :class:`~napari_dfa.model.Segmenter` the corrections were made against (not
        modified).
      store: the slide's :class:`CorrectionStore`.
      read_rgb: ``read_rgb(level, region) -> H×W×3 uint8`` pixels of the slide (called here, so
        in the caller's worker thread).
      steps: optimizer steps (default :func:`default_steps`).
      guard: keep the new model only if it scores at least as well on held-out corrections.
      replay: the reviewed region's current labels, replayed against forgetting (None: not).
      resegment: the region to segment again with a kept model (None: not).
      writeback: the whole-slide labels store that region goes into (only with ``resegment``).
      parent_source: the model's source, recorded as the parent when training names none.
      slide: the slide recorded in the provenance (default: the store's slide path).
      progress: ``progress(step, total, loss=..., val_loss=...)`` after every step.
      cancel: ``cancel() -> bool``; raises :class:`~napari_dfa.errors.Cancelled` when it turns
        true (the input model is unchanged, nothing is written).

    Returns: a :class:`FinetuneOutcome`. Raises DataError when there is nothing to train on or the
    labels store cannot be written.
    """
    # Imported here, not with the module: a widget imports this module when it is docked, and
    # torch with the training and inference modules is best loaded in a worker (see warm_up).
    from ..inference import segment
    from ..training import finetune

    steps = default_steps() if steps is None else int(steps)
    samples = store.samples(read_rgb)
    replay_samples = None
    if replay is not None:
        labels = replay.labels() if callable(replay.labels) else replay.labels
        pseudo = replay_from_prediction(np.asarray(labels), replay.corrected)
        if pseudo.any():
            replay_samples = [(read_rgb(replay.level, replay.region), pseudo)]

    # finetune() trains a copy, records b_c in its history and writes its provenance.
    result = finetune(segmenter, samples, steps=steps, replay=replay_samples, progress=progress, cancel=cancel)
    kept = bool(result.promoted) or not guard
    outcome = FinetuneOutcome(result=result, kept=kept, segmenter=result.segmenter if kept else segmenter)
    if not kept:
        logger.info("kept the old model (%s)", outcome.scores)
        return outcome
    new = result.segmenter
    prov = new.metadata.setdefault("provenance", {})
    prov.setdefault("parent", parent_source)
    prov["correction_store"] = str(store.path)
    prov["slide"] = slide if slide is not None else store.slide_path
    if resegment is not None:
        seg = segment(resegment.source, new, level=resegment.level, region=resegment.region)
        outcome.relabelled = np.asarray(seg.labels)
        if writeback is not None:
            outcome.written_back = write_back(writeback, outcome.relabelled)
    return outcome


def write_back(target: WriteBack, labels: np.ndarray) -> Path:
    """Write ``labels`` into every level of the labels store ``target.store`` at ``target.offset``,
    through a writable handle of its own (a viewer may hold the store read-only)."""
    path = Path(target.store)
    try:
        labels_store = LabelsStore.open(path, mode="r+")
    except Exception as exc:  # noqa: BLE001 - moved, deleted or read-only store
        raise DataError(f"{path}: cannot write the corrected labels back ({exc})") from None
    labels_store.write_patch(target.offset, labels)
    return path
