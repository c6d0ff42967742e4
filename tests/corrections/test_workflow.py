"""The fine-tune workflow without a viewer: corrections on a real slide file, real training steps,
the guard's verdict, provenance, the region segmented again and written back into a whole-slide
store, a class list of the user's own. (Which models the guard promotes: tests/corrections/test_guard.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from napari_dfa import synth
from napari_dfa.corrections import CorrectionStore
from napari_dfa.corrections.guard import GuardVerdict
from napari_dfa.corrections.workflow import (
    FinetuneOutcome,
    ReplaySpec,
    Resegment,
    WriteBack,
    finetune_on_corrections,
)
from napari_dfa.errors import Cancelled, DataError
from napari_dfa.inference import segment
from napari_dfa.labels.store import LabelsStore
from napari_dfa.model import load_model
from napari_dfa.slide import open_slide
from napari_dfa.training import FinetuneResult

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REGION = (1024, 1024, 256, 256)  # level 0 of the small slide


def _paint_square(store, level, region, labels):
    """A correction over the middle half of ``region``: the class the model predicts least there."""
    h, w = region[2:]
    box = (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))
    target = int(np.bincount(labels[box].ravel(), minlength=6)[1:].argmin()) + 1
    patch = store.create_patch(level=level, region=region, downsample=2.0**level)
    painted = np.zeros((h, w), np.uint8)
    painted[box] = target
    store.write(patch.key, (0, 0), painted)
    return box, target, painted


def test_region_result_is_finetuned_judged_and_segmented_again(small_slide, tiny_model_path, tmp_path):
    slide = open_slide(small_slide)
    seg = load_model(tiny_model_path)
    fingerprint = seg.fingerprint()
    before = np.asarray(segment(slide, seg, level=0, region=REGION).labels)
    store = CorrectionStore.for_slide(slide.path, root=tmp_path / "corrections", class_names=seg.class_names)
    box, target, painted = _paint_square(store, 0, REGION, before)
    steps = []

    # An untrained model: the guard may well refuse what it learns, so keep it anyway (guard off)
    # to see the mechanics; tests/corrections/test_guard.py shows what the guard promotes.
    outcome = finetune_on_corrections(
        seg, store, slide.read_region, steps=40, guard=False, method="deep",
        replay=ReplaySpec(level=0, region=REGION, labels=before, corrected=painted),
        resegment=Resegment(source=slide, level=0, region=REGION),
        parent_source=str(tiny_model_path), slide=str(slide.path),
        progress=lambda step, total, **info: steps.append((step, total, info["loss"])))

    assert isinstance(outcome, FinetuneOutcome) and isinstance(outcome.verdict, GuardVerdict)
    assert outcome.kept and outcome.segmenter is outcome.candidate is outcome.result.segmenter
    assert outcome.segmenter is not seg
    assert [s for s, _, _ in steps] == list(range(1, 41)) and all(t == 40 for _, t, _ in steps)
    # The model was trained on the painted class: the relabelled square moved towards it.
    assert outcome.relabelled.shape == (256, 256) and outcome.written_back is None
    frac_before = float((before[box] == target).mean())
    frac_after = float((outcome.relabelled[box] == target).mean())
    assert frac_after > frac_before + 0.2, (frac_before, frac_after)
    # What the review shows: changed pixels and areas per class, before -> after.
    changed = outcome.changed()
    assert changed.shape == (256, 256) and changed[box].mean() > 0.2
    table = outcome.area_table()
    assert [name for name, _, _ in table] == seg.class_names
    assert sum(b for _, b, _ in table) == int((before > 0).sum())
    assert dict((n, a) for n, _, a in table)[seg.class_names[target - 1]] > dict((n, b) for n, b, _ in table)[seg.class_names[target - 1]]
    # Provenance says where the corrections came from, from which model, and what the guard said.
    prov = outcome.segmenter.metadata["provenance"]
    assert prov["correction_store"] == str(store.path)
    assert prov["slide"] == str(slide.path)
    assert str(prov["parent"]).endswith("tiny.safetensors")
    assert prov["corrections"]["corrected_pixels"] == int((painted > 0).sum())
    assert prov["corrections"]["replay_samples"] == 1
    assert prov["finetune"]["frozen_encoder"] is True
    assert prov["guard"]["status"] == outcome.verdict.status and prov["guard"]["guard_on"] is False
    assert outcome.segmenter.bias_history()[-1][0].startswith("finetune")
    if not outcome.promoted:
        assert outcome.message.startswith("Using the fine-tuned model although the guard said: ")
    assert seg.fingerprint() == fingerprint  # the input model is untouched


def test_the_pixel_head_learns_from_strokes_with_the_rest_of_the_model_fixed(small_slide, tiny_model_path, tmp_path):
    """The default method: a pixel head fitted on the strokes (four of them: whole strokes are held
    back to score it), everything before it unchanged; it is part of the model (saved, loaded,
    used by segment) and labels the strokes' class where they are."""
    import torch

    slide = open_slide(small_slide)
    seg = load_model(tiny_model_path)
    before = np.asarray(segment(slide, seg, level=0, region=REGION).labels)
    target = int(np.bincount(before.ravel(), minlength=6)[1:].argmin()) + 1
    other = int(np.bincount(before.ravel(), minlength=6)[1:].argmax()) + 1
    painted = np.zeros(REGION[2:], np.uint8)
    for y in (16, 136):
        for x in (16, 136):
            painted[y:y + 96, x:x + 40] = target
            painted[y:y + 96, x + 56:x + 96] = other
    store = CorrectionStore.for_slide(slide.path, root=tmp_path / "corrections", class_names=seg.class_names)
    patch = store.create_patch(level=0, region=REGION)
    store.write(patch.key, (0, 0), painted)
    steps = []
    outcome = finetune_on_corrections(seg, store, slide.read_region, steps=60, guard=False, method="head",
                                      resegment=Resegment(source=slide, level=0, region=REGION),
                                      progress=lambda step, total, **info: steps.append((step, total)))
    new = outcome.candidate
    assert new.model.head is not None and seg.model.head is None
    # Fitted once per fold (every stroke held back once: 4 strokes a class, 4 folds), then on all.
    assert steps[-1] == (300, 300)
    for (k, a), b in zip(seg.model.state_dict().items(), new.model.state_dict().values()):
        assert torch.equal(a, b), k  # encoder, decoder and bias exactly as they were
    scores = outcome.result
    assert set(scores.new_class_scores) == {seg.class_names[target - 1], seg.class_names[other - 1]}
    assert scores.new_score > scores.old_score
    stroke = painted == target
    assert (outcome.relabelled[stroke] == target).mean() > 0.8 > (before[stroke] == target).mean()
    assert new.metadata["provenance"]["finetune"]["method"] == "head"
    # Part of the model: saved and loaded, it labels the slide the same through segment().
    path = new.save(tmp_path / "head.safetensors")
    again = load_model(path)
    np.testing.assert_array_equal(np.asarray(segment(slide, again, level=0, region=REGION).labels),
                                  outcome.relabelled)


def test_a_class_of_their_own(small_slide, tiny_model_path, tmp_path):
    """A class the model does not know: the store's corrections are matched to the new class list
    by name, the model gets the class (a new token) and learns it."""
    slide = open_slide(small_slide)
    seg = load_model(tiny_model_path)
    names = [*seg.class_names, "fat"]
    store = CorrectionStore.for_slide(slide.path, root=tmp_path / "corrections", class_names=names)
    patch = store.create_patch(level=0, region=REGION)
    painted = np.zeros(REGION[2:], np.uint8)
    painted[64:192, 64:192] = 6  # "fat"
    painted[:32, :] = 2
    store.write(patch.key, (0, 0), painted)
    with pytest.raises(DataError, match="class 'fat'"):
        finetune_on_corrections(seg, store, slide.read_region, steps=1)  # the model's own list lacks it

    outcome = finetune_on_corrections(seg, store, slide.read_region, steps=40, guard=False,
                                      class_names=names, class_colors=[*seg.class_colors, (250, 230, 150)],
                                      replay=ReplaySpec(level=0, region=REGION),  # labels and corrections: found here
                                      resegment=Resegment(source=slide, level=0, region=REGION))
    new = outcome.candidate
    assert new.class_names == names and new.class_colors[-1] == (250, 230, 150)
    assert new.metadata["provenance"]["classes_edit"]["added"] == ["fat"]
    assert outcome.class_names == names and outcome.result.corrected_per_class["fat"] == 128 * 128
    assert (outcome.relabelled[64:192, 64:192] == 6).mean() > 0.5
    # the guard compared on what both models know: "fat" is a new class, its share started at 0
    assert outcome.verdict.shares["fat"]["before"] == 0.0 and outcome.verdict.shares["fat"]["new_class"]
    assert outcome.verdict.compared_pixels > 0
    assert [n for n, _, _ in outcome.area_table()] == names


def test_whole_slide_patch_is_written_into_every_level(small_slide, tiny_model_path, tmp_path):
    """A corrected patch of a whole-slide result: segmented again and written into the labels
    store's level 0 and its display pyramid, nothing outside the patch changes."""
    slide = open_slide(small_slide)
    seg = load_model(tiny_model_path)
    out = tmp_path / "whole.labels.zarr"
    segment(slide, seg, level=1, out=out)  # level 1: 1024², display levels 512² and 256²
    levels_before = [np.asarray(a) for a in LabelsStore.open(out, mode="r").levels()]
    assert len(levels_before) == 3
    region = (301, 402, 256, 256)  # odd offsets: every level samples its own rows of the patch
    store = CorrectionStore.for_slide(slide.path, root=tmp_path / "corrections", class_names=seg.class_names)
    y0, x0, h, w = region
    _paint_square(store, 1, region, levels_before[0][y0:y0 + h, x0:x0 + w])

    outcome = finetune_on_corrections(
        seg, store, slide.read_region, steps=5, guard=False,
        resegment=Resegment(source=slide, level=1, region=region),
        writeback=WriteBack(store=out, offset=(y0, x0)))

    assert outcome.kept and outcome.written_back == out
    new = outcome.relabelled
    assert new.shape == (h, w)
    levels = [np.asarray(a) for a in LabelsStore.open(out, mode="r").levels()]
    np.testing.assert_array_equal(levels[0][y0:y0 + h, x0:x0 + w], new)
    expected0 = levels_before[0].copy()
    expected0[y0:y0 + h, x0:x0 + w] = new
    np.testing.assert_array_equal(levels[0], expected0)
    # Level k is level 0 subsampled by its factor (nearest), as the store builds it, patch included.
    factors = LabelsStore.open(out, mode="r").level_factors()
    assert factors[0] == 1 and all(f > 1 for f in factors[1:])
    for level, f in zip(levels[1:], factors[1:]):
        np.testing.assert_array_equal(level, expected0[::f, ::f][:level.shape[0], :level.shape[1]])


def test_nothing_to_train_cancel_and_the_guard_message(small_slide, tiny_model_path, tmp_path):
    slide = open_slide(small_slide)
    seg = load_model(tiny_model_path)
    store = CorrectionStore.for_slide(slide.path, root=tmp_path / "corrections", class_names=seg.class_names)
    with pytest.raises(DataError, match="no corrected pixels"):
        finetune_on_corrections(seg, store, slide.read_region, steps=2)

    labels = np.ones(REGION[2:], np.uint8)
    _paint_square(store, 0, REGION, labels)
    with pytest.raises(Cancelled):
        finetune_on_corrections(seg, store, slide.read_region, steps=2, cancel=lambda: True)

    # A fine-tuned model the guard rejected is not kept: the input model stays, and it says why.
    worse = FinetuneResult(segmenter=object(), promoted=False, old_score=0.61, new_score=float("nan"))
    verdict = GuardVerdict(status="rejected", reason="Kept the old model: it is not better.")
    outcome = FinetuneOutcome(result=worse, verdict=verdict, kept=False, segmenter=seg)
    assert not outcome.promoted and outcome.relabelled is None and outcome.changed() is None
    assert outcome.scores == "held-out score 0.610 → n/a"
    assert outcome.message == "Kept the old model: it is not better."  # no advice to switch the guard off


def test_own_classes_on_tissue_the_model_never_saw_are_learnt_and_promoted(tmp_path):
    """Real IHC pixels (scikit-image's immunohistochemistry image: DAB and haematoxylin, which the
    demo model never saw) beside synthetic H&E, with a class list of the pathologist's own: a few
    strokes per class on two tiles of each, and the model labels the tiles nobody painted; the
    guard promotes it on the strokes held back, where the old model scored nothing."""
    from skimage import data

    ihc = data.immunohistochemistry()
    t = 256
    rgb = np.zeros((4 * t, 4 * t, 3), np.uint8)
    truth = np.zeros((4 * t, 4 * t), np.uint8)
    rng = np.random.default_rng(3)
    for i in range(16):
        gy, gx = divmod(i, 4)
        box = (slice(gy * t, (gy + 1) * t), slice(gx * t, (gx + 1) * t))
        if (gy + gx) % 2:
            y, x = rng.integers(0, ihc.shape[0] - t, 2)
            rgb[box] = np.rot90(ihc[y:y + t, x:x + t], int(rng.integers(4)))
            truth[box] = 1
        else:
            rgb[box] = synth.generate_tile(seed=100 + i, size=t)[0]
            truth[box] = 2
    names = ["brown IHC", "H&E"]
    painted = np.zeros_like(truth)
    for ty, tx in ((0, 1), (1, 0), (0, 0), (1, 1)):  # two tiles of each class
        for k in range(3):
            y0, x0 = ty * t + 30 + 70 * k, tx * t + 40 + 60 * k
            painted[y0:y0 + 24, x0:x0 + 24] = truth[y0, x0]
    seg = load_model("demo")
    store = CorrectionStore(tmp_path / "c.zarr", class_names=names)
    patch = store.create_patch(level=0, region=(0, 0, *truth.shape))
    store.write(patch.key, (0, 0), painted)
    read = lambda level, box: rgb[box[0]:box[0] + box[2], box[1]:box[1] + box[3]]  # noqa: E731
    outcome = finetune_on_corrections(seg, store, read, class_names=names)
    assert outcome.verdict.status == "promoted", outcome.verdict.reason
    assert outcome.kept and outcome.segmenter.class_names == names
    assert outcome.result.old_score < 0.5 < outcome.result.new_score
    labels = np.asarray(segment(rgb, outcome.segmenter).labels)
    unseen = labels > 0  # tissue (the synthetic tiles' glass is no class)
    unseen[:2 * t, :2 * t] = False  # the four tiles with strokes
    dice = []
    for c in (1, 2):
        p, g = (labels == c) & unseen, (truth == c) & unseen
        dice.append(2 * (p & g).sum() / (p.sum() + g.sum()))
    assert min(dice) > 0.5 and np.mean(dice) > 0.6, dice  # measured: 0.74 and 0.62 (the old model: 0.00)
