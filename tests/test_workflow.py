"""The fine-tune workflow without a viewer: corrections on a real slide file, real training steps,
the guard, provenance, the region segmented again and written back into a whole-slide store."""

from __future__ import annotations

import numpy as np
import pytest
from widget_fixtures import small_slide, tiny_model_path  # noqa: F401  (fixtures)

from napari_dfa.corrections import CorrectionStore
from napari_dfa.corrections.workflow import (
    FinetuneOutcome,
    ReplaySpec,
    Resegment,
    WriteBack,
    finetune_on_corrections,
)
from napari_dfa.errors import Cancelled, DataError
from napari_dfa.inference import segment
from napari_dfa.labels import LabelsStore
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


def test_region_result_is_finetuned_guarded_and_segmented_again(small_slide, tiny_model_path, tmp_path):
    slide = open_slide(small_slide)
    seg = load_model(tiny_model_path)
    fingerprint = seg.fingerprint()
    before = np.asarray(segment(slide, seg, level=0, region=REGION).labels)
    store = CorrectionStore.for_slide(slide.path, root=tmp_path / "corrections", class_names=seg.class_names)
    box, target, painted = _paint_square(store, 0, REGION, before)
    steps = []

    outcome = finetune_on_corrections(
        seg, store, slide.read_region, steps=40, guard=True,
        replay=ReplaySpec(level=0, region=REGION, labels=before, corrected=painted),
        resegment=Resegment(source=slide, level=0, region=REGION),
        parent_source=str(tiny_model_path), slide=str(slide.path),
        progress=lambda step, total, **info: steps.append((step, total, info["loss"])))

    assert isinstance(outcome, FinetuneOutcome)
    assert outcome.promoted and outcome.kept
    assert outcome.segmenter is outcome.result.segmenter and outcome.segmenter is not seg
    assert [s for s, _, _ in steps] == list(range(1, 41)) and all(t == 40 for _, t, _ in steps)
    # The model was trained on the painted class: the relabelled square moved towards it.
    assert outcome.relabelled.shape == (256, 256) and outcome.written_back is None
    frac_before = float((before[box] == target).mean())
    frac_after = float((outcome.relabelled[box] == target).mean())
    assert frac_after > frac_before + 0.2, (frac_before, frac_after)
    # Provenance says where the corrections came from, and from which model.
    prov = outcome.segmenter.metadata["provenance"]
    assert prov["correction_store"] == str(store.path)
    assert prov["slide"] == str(slide.path)
    assert str(prov["parent"]).endswith("tiny.safetensors")
    assert prov["corrections"]["corrected_pixels"] == int((painted > 0).sum())
    assert prov["corrections"]["replay_samples"] == 1
    assert prov["finetune"]["promoted"] is True
    assert outcome.segmenter.bias_history()[-1][0].startswith("finetune")
    assert outcome.message.startswith("Fine-tuned (held-out score ")
    assert seg.fingerprint() == fingerprint  # the input model is untouched


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

    # A fine-tuned model that scored worse is not kept: the input model stays, nothing is segmented.
    worse = FinetuneResult(segmenter=object(), promoted=False, old_score=0.61, new_score=float("nan"))
    outcome = FinetuneOutcome(result=worse, kept=False, segmenter=seg)
    assert not outcome.promoted and outcome.relabelled is None
    assert outcome.scores == "held-out score 0.610 → n/a"
    assert outcome.message.startswith("Kept the old model: the fine-tuned one scored worse")
