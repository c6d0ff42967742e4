"""From a pathologist's corrections to a better model, in one headless call (no Qt).

(Over 450 lines: :func:`finetune_on_corrections` is ~200 of them, the loop below in one place; the
rest is what its callers, the Fine-tune widget and ``napari-dfa finetune``, hand it and ask around
it — its input specs, the method choice, the regions to check; the region pickers at the end,
~60 lines, are the seam to cut next if it grows.)

:func:`finetune_on_corrections` runs the whole loop that the Fine-tune widget and
``napari-dfa finetune`` offer:

1. the class list: when the pathologist's list differs from the model's (added, renamed,
   recoloured or removed classes), the model gets it first (:func:`napari_dfa.model.classes_edit.with_classes`:
   kept names keep their learned token, a new class gets a new token and its bias warm-started
   from its share of the corrected pixels);
2. the verified pixels of a slide — corrections, and regions confirmed as right ("Looks right",
   :meth:`CorrectionStore.confirm_region`) — become training samples (:meth:`CorrectionStore.samples`);
3. a copy of the model learns from them: by default its pixel head is fitted on them
   (:func:`napari_dfa.training.head.fit_head`: hand-made multi-scale features and the model's own,
   everything before the head fixed; seconds on a CPU). With ``method="deep"`` the layers after the
   encoder train instead (:func:`napari_dfa.training.finetune`), the reviewed regions' current labels
   replayed beside the corrections (:func:`replay_from_prediction`);
4. the guard (:mod:`.guard`) compares new and old on verified pixels only: strokes and confirmed
   regions held back whole, per class; what changes where nothing is verified is measured and
   shown, not used to decide;
5. the reviewed region is segmented again with the new model, so the user sees what changed
   before accepting it (and where to look next: :meth:`FinetuneOutcome.look_next`); a kept model
   records where its corrections came from (provenance), and for a whole-slide result the new
   labels go into a copy of the labels store (:func:`write_back`).

The caller gathers the inputs (which region, which labels) and shows the outcome; a widget does
so on its UI thread and runs this function in a worker, a script simply calls it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..labels.store import LabelsStore
from .guard import NEEDS_CONFIRMATION, PROMOTED, HeldOut, RegionComparison, judge, label_map
from .outcome import FinetuneOutcome
from .replay import replay_from_prediction
from .store import CorrectionStore


logger = logging.getLogger(__name__)

GPU_STEPS = 200
CPU_STEPS = 40
METHODS = ("auto", "head", "deep", "both")


# Training crops around the corrections. With the encoder frozen the decoder learns from cached
# features, and 256-px crops keep a click at ~9 s on a CPU. When the encoder trains too, crops as
# large as a slide-trained model's training crops: on a 1024² case slide, 40 steps of truth-painted
# corrections raised mDice where nothing was corrected 0.914 -> 0.942 (frozen, 256 px: 0.924;
# encoder, 256 px: 0.933) with the shipped demo model, and 0.847 -> 0.856 with one trained on
# 512-px slide crops, which 256-px crops did not move (0.848); 38 s against 9 s on one thread.
FROZEN_CROP = 256
ENCODER_CROP = 512


def default_steps(method: str = "deep") -> int:
    """Pixel head: :data:`~napari_dfa.training.head.HEAD_STEPS`. Deep: 200 steps with a GPU; 40 on a
    CPU, where a step of the demo model with its encoder frozen takes a fraction of a second
    (benchmarks/bench_gui.py measures the whole click)."""
    if method == "head":
        from ..training.head import HEAD_STEPS

        return HEAD_STEPS
    import torch

    gpu = torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
    return GPU_STEPS if gpu else CPU_STEPS


def warm_up_training() -> None:
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
    """A reviewed region: its current labels are replayed beside the corrections (thinned, away from
    them), and the guard compares old and new labels there.

    Arguments:
      level: pyramid level of ``region`` (as ``read_rgb`` takes it).
      region: (y0, x0, h, w) in ``level`` pixels.
      labels: the current labels over the region (h×w uint8, the old model's class numbers), a
        function returning them (called in the worker, e.g. a zarr read), or None: the old model
        labels the region here.
      corrected: the corrections over the region (h×w, 0 = not corrected), or None: taken from the
        store's patches at this level.
    """

    level: int
    region: tuple[int, int, int, int]
    labels: np.ndarray | Callable[[], np.ndarray] | None = None
    corrected: np.ndarray | None = None


@dataclass
class Resegment:
    """What to segment again with the new model: ``segment(source, model, level=level, region=region)``.

    Arguments:
      source: what :func:`napari_dfa.inference.segment` reads: a Slide or a Y×X×3 array.
      level: the level of ``source`` to read.
      region: (y0, x0, h, w) in pixels of that level.
      tile_workers: one-thread passes at once on a CPU (None: as many as torch has threads; the
        Fine-tune widget gives one per core, as the Segment widget does).
      stain: the :class:`~napari_dfa.model.stain.StainMatch` the region was segmented with (None:
        its pixels as stored).
    """

    source: Any
    level: int
    region: tuple[int, int, int, int]
    tile_workers: int | None = None
    stain: Any = None


@dataclass
class WriteBack:
    """Where the segmented-again labels go: a whole-slide labels store written by
    :func:`~napari_dfa.inference.segment`, at ``offset`` (y, x) in its level-0 pixels."""

    store: str | os.PathLike
    offset: tuple[int, int]
    # Where the result goes instead (a copy of ``store`` with the labels written into it): a
    # whole-slide store belongs to the model that made it, so a new model's labels never go into it.
    fork_to: str | os.PathLike | None = None
    info: dict = field(default_factory=dict)  # merged into the copy's napari_dfa attributes


def _part(progress, offset: int, *, total: int | None = None):
    """``progress`` for one of several runs: its step ``offset + step`` of ``total`` (None: the
    run's own total)."""
    if progress is None:
        return None

    def report(step, n, **info):
        progress(offset + step, total if total is not None else n, **info)

    return report


def _better(judged):
    """``(result, verdict)`` to keep of the methods' ``[(result, verdict)]``: one the guard promotes
    before one it asks about before one it rejects, then the better on the held-back strokes (the
    head on a tie: listed first). On the demo's own tissue the head won on held-back strokes and
    repainted confirmed tissue the deep fine-tune kept (tests/test_guard.py)."""
    rank = {PROMOTED: 0, NEEDS_CONFIRMATION: 1}

    def key(item):
        res, verdict = item
        score = -1.0 if math.isnan(res.new_score) else float(res.new_score)
        return rank.get(verdict.status, 2), -round(score, 2)

    ordered = sorted(judged, key=key)  # stable: the head first on a tie
    chosen, verdict = ordered[0]
    if len(ordered) > 1:
        other, other_verdict = ordered[1]
        chosen.alternative = {"method": other.method, "held_out_mean": None if math.isnan(other.new_score)
                              else float(other.new_score), "guard": other_verdict.status}
        logger.info("fine-tuning: %s (%s, %.3f) over %s (%s, %.3f)", chosen.method, verdict.status,
                    chosen.new_score, other.method, other_verdict.status, other.new_score)
    return chosen, verdict


def choose_method(segmenter, names: Sequence[str], images: Sequence[np.ndarray], *,
                  renames: dict[str, str] | None = None, report=None) -> tuple[str, str]:
    """``(method, why)`` for ``method="auto"``: the pixel head where the model's own features fall
    short — a class it never had, tissue unlike its training data (:func:`~napari_dfa.model.domain.domain_check`
    on the corrected images), or a model that does not record its training data — else the deep
    fine-tune. Measured: on real tissue with a class list of one's own the head beat a random
    forest where the deep fine-tune did not; on the demo's own tissue and classes the head,
    fitted on strokes painted where the model erred, repainted tissue it had right (0.97 -> 0.67
    mean Dice where nothing was corrected, benchmarks/bench_guard.py) and the deep fine-tune did
    not."""
    from ..model.domain import domain_check

    lut = label_map(segmenter.class_names, names, renames)
    fresh = set(untrained_classes(segmenter))
    known = {int(v) for n, v in zip(segmenter.class_names, lut[1:]) if v > 0 and n not in fresh}
    new = [n for i, n in enumerate(names) if i + 1 not in known]
    if new:
        return "head", f"{', '.join(new)} {'are classes' if len(new) > 1 else 'is a class'} the model never had"
    report = report if report is not None else domain_check(segmenter, images)
    if report.far:
        return "head", "this tissue lies outside what the model was trained on"
    if math.isnan(report.distance):
        return "head", "the model does not record what it was trained on"
    return "deep", "the tissue looks like the model's training data, in the model's own classes"


def untrained_classes(segmenter) -> list[str]:
    """The classes of ``segmenter`` that a class edit added and no training has seen since: their
    token is a fresh start (:func:`~napari_dfa.model.classes_edit.with_classes`), so for choosing
    how to learn they are classes the model never had (the Fine-tune widget applies a class edit as
    its own model version before fine-tuning)."""
    edits, prov = [], segmenter.metadata.get("provenance") or {}
    while isinstance(prov, dict) and isinstance(prov.get("classes_edit"), dict) and "finetune" not in prov:
        edits.append(prov["classes_edit"])
        prov = prov.get("parent_provenance")
    fresh: set[str] = set()
    for edit in reversed(edits):  # oldest first: later edits rename or remove what earlier ones added
        renamed, removed = edit.get("renamed") or {}, set(edit.get("removed") or ())
        fresh = {renamed.get(n, n) for n in fresh if n not in removed} | set(edit.get("added") or ())
    return [n for n in segmenter.class_names if n in fresh]


def _store_lut(store: CorrectionStore, names: Sequence[str]) -> np.ndarray:
    """Store label → label of ``names`` by class name (0 for a class the list lacks)."""
    lut = np.zeros(256, np.uint8)
    m = label_map(store.class_names, names)
    lut[:len(m)] = m
    return lut


def finetune_on_corrections(segmenter, store: CorrectionStore,
                            read_rgb: Callable[[int, tuple[int, int, int, int]], np.ndarray], *,
                            steps: int | None = None, guard: bool = True, confirm: bool = False,
                            replay: ReplaySpec | Sequence[ReplaySpec] | None = None,
                            check: Sequence[tuple[int, tuple[int, int, int, int]]] | None = None,
                            resegment: Resegment | None = None, writeback: WriteBack | None = None,
                            class_names: Sequence[str] | None = None, class_colors=None,
                            renames: dict[str, str] | None = None, replay_training: bool = True,
                            frozen_encoder: bool = True, crop: int | None = None, method: str = "auto",
                            parent_source: str | None = None, slide: str | None = None, seed: int = 0,
                            more: Sequence[tuple[CorrectionStore, Callable]] = (),
                            progress: Callable | None = None,
                            cancel: Callable[[], bool] | None = None) -> FinetuneOutcome:
    """Fine-tune on every correction saved for a slide (hidden patches aside), let the guard judge
    the new model, and segment the reviewed region again with it.

    Arguments:
      segmenter: the :class:`~napari_dfa.model.Segmenter` the corrections were made against (not
        modified).
      store: the slide's :class:`CorrectionStore`.
      read_rgb: ``read_rgb(level, region) -> H×W×3 uint8`` pixels of the slide (called here, so
        in the caller's worker thread).
      steps: optimizer steps (default :func:`default_steps`).
      guard: keep the new model only when the guard promotes it (False: keep it anyway).
      confirm: the user's say for a model the guard could not test (``needs_confirmation``).
      replay: the reviewed region(s), replayed against forgetting and compared by the guard.
      check: more regions (level, region) the guard compares, never trained on.
      resegment: the region to segment again with the new model (None: not).
      writeback: the whole-slide labels store that region goes into (only with ``resegment``,
        only when the model is kept).
      replay_training: replay the reviewed regions' labels in training (False: the guard still
        compares old and new labels there).
      class_names / class_colors / renames: the class list of the new model when it differs from
        the model's (see :func:`~napari_dfa.model.classes_edit.with_classes`); the store's
        corrections are matched to it by class name.
      frozen_encoder: train only the layers after the encoder, on its cached features (False:
        the encoder trains too, ~4x the time; see :data:`ENCODER_CROP`).
      crop: training crop side in pixels (around corrections; None: :data:`FROZEN_CROP` with the
        encoder frozen, :data:`ENCODER_CROP` when it trains).
      method: ``"head"`` (default): fit the pixel head (:mod:`napari_dfa.training.head`) on the
        verified pixels, everything before it fixed — seconds, and it learns tissue and classes
        the model never saw; ``"deep"``: train the layers after the encoder (and the encoder with
        ``frozen_encoder=False``) with :func:`~napari_dfa.training.finetune`, the old labels of
        the reviewed regions replayed (``replay_training``); ``"auto"``: one of the two by :func:`choose_method` (the head for a class
        the model never had or tissue unlike its training data, else the deep fine-tune);
        ``"both"``: both, each judged by the guard; one it promotes wins over one it asks about
        or rejects, then the better on the held-back strokes (the head on a tie).
        ``steps`` (each method's own default when None) applies to the method that runs (with
        ``auto``, the one chosen); with ``both``, to the deep fine-tune (the head keeps its own).
      parent_source: the model's source, recorded as the parent when training names none.
      slide: the slide recorded in the provenance (default: the store's slide path).
      seed: seeds the hold-out split, crops and replay blocks.
      more: ``[(store, read_rgb)]`` of other slides whose corrections and confirmed regions train
        the same model and are held back to test it alike (one model from many slides).
      progress: ``progress(step, total, loss=..., val_loss=...)`` after every step.
      cancel: ``cancel() -> bool``; raises :class:`~napari_dfa.errors.Cancelled` when it turns
        true (the input model is unchanged, nothing is written).

    Returns: a :class:`FinetuneOutcome`. Raises DataError when there is nothing to train on, a
    corrected class is not in the class list, or the labels store cannot be written.
    """
    # Imported here, not with the module: a widget imports this module when it is docked, and
    # torch with the training and inference modules is best loaded in a worker (see warm_up_training).
    from ..inference import Runtime, segment
    from ..inference.tissue import tissue_from_rgb
    from ..training import finetune
    from ..training.frozen import FeatureCache, predict_region

    t0 = time.monotonic()
    if method not in METHODS:
        raise DataError(f"unknown fine-tuning method {method!r}; choose one of {', '.join(METHODS)}")
    steps = None if steps is None else int(steps)
    if method in ("head", "auto", "both") and not frozen_encoder:
        method = "deep"  # training the encoder is the deep method's
    old_names = list(segmenter.class_names)
    names = [str(n) for n in class_names] if class_names is not None else old_names
    lut = label_map(old_names, names, renames)
    start = segmenter
    if names != old_names or renames or (class_colors is not None and
                                         [tuple(c) for c in class_colors] != list(segmenter.class_colors)):
        from ..model.classes_edit import with_classes

        counts: dict[str, int] = {}
        for st in [store, *[st for st, _ in more]]:
            for n, c in st.counts_by_name().items():
                if n in names:
                    counts[n] = counts.get(n, 0) + c
        start = with_classes(segmenter, names, class_colors, renames=renames, corrected_frequencies=counts or None,
                             seed=seed)
    store_lut = _store_lut(store, names)
    samples = store.samples(read_rgb, class_names=names)
    for other, read_other in more:
        samples += other.samples(read_other, class_names=names)
    chosen_because, domain = None, None
    if method in ("auto", "head", "both"):  # where the tissue lies decides auto, and what the head keeps
        from ..model.domain import domain_check

        images = [r for r, _ in samples]
        domain = domain_check(segmenter, images)
    if method == "auto":
        method, chosen_because = choose_method(segmenter, names, images, renames=renames, report=domain)
        logger.info("fine-tuning: %s, as %s", method, chosen_because)

    # The reviewed regions: pixels, labels before (old class numbers), corrections, replay.
    specs = [replay] if isinstance(replay, ReplaySpec) else list(replay or [])
    cache = FeatureCache(start.model, multiple=start.input_multiple) if frozen_encoder else None
    old_cache = cache if frozen_encoder else FeatureCache(segmenter.model, multiple=segmenter.input_multiple)
    regions, replay_samples = [], []
    for i, spec in enumerate(specs):
        rgb = np.asarray(read_rgb(spec.level, spec.region))
        labels = spec.labels() if callable(spec.labels) else spec.labels
        tissue = old_pred = None
        if labels is None:
            old_pred = predict_region(segmenter, rgb, old_cache)
            tissue = tissue_from_rgb(rgb)
            labels = np.where(tissue, old_pred, 0).astype(np.uint8)
        labels = np.asarray(labels)
        corrected = (store_lut[np.asarray(spec.corrected)] if spec.corrected is not None
                     else store.labels_over(spec.level, spec.region, lut=store_lut))
        pseudo = replay_from_prediction(lut[labels], corrected, seed=seed + i) if replay_training \
            else np.zeros(labels.shape, np.uint8)
        if pseudo.any():
            replay_samples.append((rgb, pseudo))
        regions.append((f"reviewed region {i + 1}" if len(specs) > 1 else "reviewed region",
                        rgb, labels, old_pred, corrected, pseudo > 0, labels > 0 if tissue is None else tissue))
    for j, (level, region) in enumerate(check or []):
        rgb = np.asarray(read_rgb(level, region))
        tissue = tissue_from_rgb(rgb)
        old_pred = predict_region(segmenter, rgb, old_cache)
        regions.append((f"check region {j + 1}", rgb, np.where(tissue, old_pred, 0).astype(np.uint8), old_pred,
                        store.labels_over(level, region, lut=store_lut), None, tissue))

    # fit_head() / finetune() train a copy and write its provenance.
    if crop is None:
        crop = FROZEN_CROP if frozen_encoder else ENCODER_CROP
    # After a class edit, the old scores are the original model's, in the new list by name.
    baseline = (segmenter, lut) if start is not segmenter else None
    head_result = deep_result = None
    # ``steps`` is the method's that runs (auto: the one chosen); with both, the deep fine-tune's.
    head_steps = steps if steps is not None and method == "head" else default_steps("head")
    deep_steps = steps if steps is not None and method != "head" else default_steps("deep")
    from ..training.head import HEAD_FOLDS, fit_head

    head_total = (HEAD_FOLDS + 1) * head_steps  # a fit per fold of the hold-out, then the one delivered
    whole = head_total + deep_steps if method == "both" else None
    if method in ("head", "both"):

        # The head learns from verified pixels, and leaves the model's sure answers of the classes
        # it was trained on where nothing is verified — on tissue like its training data only: on
        # tissue it never saw its sure answers are the errors being corrected (on the real-pixel
        # mosaic, keeping the demo's sure "tumour" cost round 1 0.705 -> 0.513).
        fresh = set(untrained_classes(start))
        near = domain is not None and not domain.far and not math.isnan(domain.distance)
        keep = [i + 1 for i, n in enumerate(start.class_names) if n not in fresh] if near else []
        head_result = fit_head(start, samples, steps=head_steps, seed=seed, cache=cache, cancel=cancel, baseline=baseline,
                               progress=_part(progress, 0, total=whole), keep=keep,
                               new_classes=[i + 1 for i, n in enumerate(start.class_names) if n in fresh])
    if method in ("deep", "both"):
        deep_result = finetune(start, samples, steps=deep_steps, replay=replay_samples or None, seed=seed, crop=crop,
                               frozen_encoder=frozen_encoder, cache=cache, cancel=cancel, baseline=baseline,
                               progress=_part(progress, head_total if method == "both" else 0, total=whole))

    # The guard: held-out corrections, and old vs new where nothing was corrected. Old and new
    # labels come from the same predictor on the same pixels, so only the model differs.
    olds = [old if old is not None else predict_region(segmenter, rgb, old_cache)
            for _name, rgb, _labels, old, *_ in regions]

    def assess(res):
        cand = res.segmenter
        cand_cache = cache if frozen_encoder else FeatureCache(cand.model, multiple=cand.input_multiple)
        comparisons = []
        for (name, rgb, _labels, _old, corrected, trained, tissue), old in zip(regions, olds):
            comparisons.append(RegionComparison(name=name, old=old, new=predict_region(cand, rgb, cand_cache),
                                                corrected=corrected, trained=trained, tissue=tissue))
        held = HeldOut(old=res.old_class_scores, new=res.new_class_scores, pixels=res.held_out_per_class,
                       too_few=res.too_few, confusion=_evidence(regions, res, lut, len(names)),
                       right_kept=res.right_kept, strokes=res.strokes)
        return judge(held, comparisons, old_names=old_names, new_names=names, renames=renames)

    result, verdict = _better([(r, assess(r)) for r in (head_result, deep_result) if r is not None])
    new = result.segmenter
    kept = verdict.promoted or (verdict.needs_confirmation and confirm) or not guard

    prov = new.metadata.setdefault("provenance", {})
    if prov.get("parent") is None:
        prov["parent"] = parent_source
    if start is not segmenter:  # the class list changed before training: say so at the top
        prov["classes_edit"] = (start.metadata.get("provenance") or {}).get("classes_edit")
    prov["correction_store"] = str(store.path)
    if chosen_because:
        prov["method_chosen"] = f"{result.method}: {chosen_because}"
    if more:
        prov["more_correction_stores"] = [str(st.path) for st, _ in more]
    prov["slide"] = slide if slide is not None else store.slide_path
    prov["guard"] = {"status": verdict.status, "reason": verdict.reason, "agreement": verdict.agreement,
                     "kept": bool(kept), "confirmed": bool(confirm and verdict.needs_confirmation),
                     "guard_on": bool(guard)}
    outcome = FinetuneOutcome(result=result, verdict=verdict, kept=kept, segmenter=new if kept else segmenter,
                              candidate=new, class_names=names, old_names=old_names, label_map=lut, guard=guard,
                              before=regions[0][2] if regions else None)
    if resegment is not None:
        seg = segment(resegment.source, new, level=resegment.level, region=resegment.region,
                      runtime=Runtime(tile_workers=resegment.tile_workers), stain=resegment.stain)
        outcome.relabelled = np.asarray(seg.labels)
        if writeback is not None and kept:
            outcome.written_back = write_back(writeback, outcome.relabelled)
    outcome.seconds = time.monotonic() - t0
    logger.info("fine-tuning: %s in %.1f s (%s)", verdict.status, outcome.seconds, outcome.scores)
    return outcome


def _evidence(regions, result, lut: np.ndarray, k: int) -> np.ndarray:
    """(K+1)×(K+1) corrected pixels × the old label under them: what the corrections changed.

    Read from the old labels of the reviewed regions (what the user saw, predicted with a whole
    region's context) where the corrections lie in one; the labels of a look-alike class can
    depend on that context. Corrections outside every region count with the old model's labels on
    their training crops (``result.correction_confusion``), in proportion."""
    conf = np.zeros((k + 1, k + 1), np.int64)
    covered = 0
    for _name, _rgb, labels, _old, corrected, _trained, _tissue in regions:
        c = np.asarray(corrected)
        m = c > 0
        if m.any():
            np.add.at(conf, (c[m].astype(np.int64), lut[np.asarray(labels)[m]].astype(np.int64)), 1)
            covered += int(m.sum())
    crop_conf = result.correction_confusion
    if crop_conf is not None and crop_conf.shape == conf.shape:
        rest = int(crop_conf.sum()) - covered
        if rest > 0:
            conf = conf + np.rint(crop_conf * (rest / max(1, int(crop_conf.sum())))).astype(np.int64)
    return conf


def write_back(target: WriteBack, labels: np.ndarray) -> Path:
    """Write ``labels`` into every level of the labels store ``target.store`` at ``target.offset``,
    through a writable handle of its own (a viewer may hold the store read-only); with
    ``target.fork_to``, into a copy of it there (``target.store`` is left as it was). Returns the
    store written."""
    path = Path(target.store)
    try:
        labels_store = LabelsStore.open(path, mode="r" if target.fork_to is not None else "r+")
    except Exception as exc:  # noqa: BLE001 - moved, deleted or read-only store
        raise DataError(f"{path}: cannot write the corrected labels back ({exc})") from None
    if target.fork_to is not None:
        labels_store = labels_store.copy_to(target.fork_to, **target.info)
    labels_store.write_patch(target.offset, labels)
    return labels_store.path


def regions_around_corrections(store: CorrectionStore, level_shapes: Sequence[tuple[int, int]], *,
                               margin: int = 256, max_side: int = 2048) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(level, region) around each patch's corrections in use, ``margin`` pixels wider on every
    side and at most ``max_side`` pixels high and wide (centred on the corrections): the reviewed
    regions of a headless run, where the guard compares old and new labels."""
    out = []
    for p in store.patches():
        if store.hidden(p.key):
            continue
        mask = store.read(p.key)
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            continue
        H, W = level_shapes[p.level]
        cy, cx = p.region[0] + (ys.min() + ys.max()) // 2, p.region[1] + (xs.min() + xs.max()) // 2
        h = min(max_side, int(ys.max() - ys.min()) + 1 + 2 * margin, H)
        w = min(max_side, int(xs.max() - xs.min()) + 1 + 2 * margin, W)
        y0 = int(np.clip(cy - h // 2, 0, H - h))
        x0 = int(np.clip(cx - w // 2, 0, W - w))
        out.append((p.level, (y0, x0, h, w)))
    return out


def check_regions(slide, level: int, avoid: Sequence[tuple[int, int, int, int]], *, n: int = 2,
                  size: int = 512, seed: int = 0) -> list[tuple[int, tuple[int, int, int, int]]]:
    """Up to ``n`` regions (level, (y0, x0, size, size)) of tissue at ``level`` of a Slide that
    overlap none of the ``avoid`` regions (in that level's pixels): independent places where the
    guard checks that a fine-tuned model did not repaint tissue nobody looked at."""
    from ..inference.tissue import tissue_from_rgb

    H, W = (int(v) for v in slide.levels[level].shape[:2])
    size = min(size, H, W)
    low = max((lv for lv in range(level, len(slide.levels))
               if max(slide.levels[lv].shape[:2]) >= 256), default=level)
    f = slide.downsamples[low] / slide.downsamples[level]
    view = np.asarray(slide.read_region(low, (0, 0, *slide.levels[low].shape[:2])))
    step = max(1, int(math.ceil(max(view.shape[:2]) / 1024)))
    mask = tissue_from_rgb(view[::step, ::step])
    scale = f * step
    ys, xs = np.nonzero(mask)
    rng = np.random.default_rng(seed)
    out: list[tuple[int, tuple[int, int, int, int]]] = []
    for i in rng.permutation(len(ys))[:200]:
        y0 = int(np.clip(ys[i] * scale - size // 2, 0, H - size))
        x0 = int(np.clip(xs[i] * scale - size // 2, 0, W - size))
        box = (y0, x0, size, size)
        if any(_overlap(box, a) for a in [*avoid, *(r for _, r in out)]):
            continue
        sub = mask[int(y0 / scale):int((y0 + size) / scale) + 1, int(x0 / scale):int((x0 + size) / scale) + 1]
        if sub.size and sub.mean() >= 0.5:
            out.append((level, box))
        if len(out) >= n:
            break
    return out


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
