"""Fine-tuning on corrections: predictions move toward the correction, the input model is untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dfa import synth
from napari_dfa.errors import Cancelled, DataError
from napari_dfa.model import ModelConfig, Segmenter, load_model
from napari_dfa.training import FinetuneResult, finetune
from napari_dfa.training.finetune import split_holdout


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return Segmenter.from_config(ModelConfig.from_preset("tiny", num_classes=5), frequencies=[0.05, 0.35, 0.3, 0.25, 0.05],
                                 class_names=["inflammatory", "tumour", "stroma", "other", "necrosis"])


def _state(seg):
    return {k: v.detach().clone() for k, v in seg.model.state_dict().items()}


def test_finetune_moves_predictions_toward_the_correction_and_keeps_the_input(tiny):
    rgb, _ = synth.generate_tile(seed=11, size=128)
    before_labels = tiny.predict(rgb)
    # Correct a patch to the class the model predicts least there: the correction is a real change.
    counts = np.bincount(before_labels[24:104, 24:104].ravel(), minlength=6)[1:]
    target = int(np.argmin(counts)) + 1
    mask = np.zeros((128, 128), np.uint8)
    mask[24:104, 24:104] = target
    before = (before_labels[mask > 0] == target).mean()
    state = _state(tiny)
    bias_before = tiny.class_bias().copy()
    calls = []
    result = finetune(tiny, [(rgb, mask)], steps=25, batch_size=2, crop=96, lr=3e-3, seed=1,
                      progress=lambda step, total, **info: calls.append((step, total, info)))
    assert isinstance(result, FinetuneResult)
    after = (result.segmenter.predict(rgb)[mask > 0] == target).mean()
    assert after > before + 0.5 and after > 0.8, (before, after)
    # the caller's Segmenter is exactly as it was
    assert all(torch.equal(v, tiny.model.state_dict()[k]) for k, v in state.items())
    np.testing.assert_array_equal(tiny.class_bias(), bias_before)
    assert np.array_equal(tiny.predict(rgb), before_labels)
    # δ trained too, and its history got the fine-tuning entries
    assert not np.allclose(result.segmenter.class_bias(), bias_before)
    phases = [h.get("phase") for h in result.segmenter.metadata["bias_history"]]
    assert phases[-2:] == ["finetune", "finetune"]
    # progress every step with the losses; scores on the held-out corrections
    assert [c[0] for c in calls] == list(range(1, 26)) and all(c[1] == 25 for c in calls)
    assert {"loss", "val_loss"} <= set(calls[-1][2])
    assert result.held_out_pixels > 0 and result.corrected_pixels == int((mask > 0).sum())
    assert result.new_score > result.old_score and result.promoted
    prov = result.segmenter.metadata["provenance"]
    assert prov["corrections"]["corrected_pixels"] == result.corrected_pixels
    assert prov["finetune"]["promoted"] is True


def test_finetuned_model_saves_with_provenance(tiny, tmp_path):
    parent = tmp_path / "parent.safetensors"
    tiny.save(parent)
    seg = load_model(parent)
    rgb, truth = synth.generate_tile(seed=4, size=64)
    result = finetune(seg, [(rgb, truth)], steps=2, batch_size=1, crop=64, seed=0)
    out = result.segmenter.save(tmp_path / "child.safetensors", provenance=result.segmenter.metadata["provenance"])
    child = load_model(out)
    assert child.metadata["provenance"]["parent"] == str(parent)
    assert child.metadata["provenance"]["corrections"]["corrected_pixels"] == int((truth > 0).sum())
    assert [h["phase"] for h in child.metadata["bias_history"]][-1] == "finetune"


def test_cancel_and_bad_corrections(tiny):
    rgb, truth = synth.generate_tile(seed=2, size=64)
    state = _state(tiny)
    with pytest.raises(Cancelled):
        finetune(tiny, [(rgb, truth)], steps=50, crop=64, cancel=lambda: True)
    assert all(torch.equal(v, tiny.model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(DataError, match="no corrected pixels"):
        finetune(tiny, [(rgb, np.zeros((64, 64), np.uint8))], steps=1)
    with pytest.raises(DataError, match="class ids up to 9"):
        finetune(tiny, [(rgb, np.full((64, 64), 9, np.uint8))], steps=1)
    with pytest.raises(DataError, match="does not match"):
        finetune(tiny, [(rgb, truth[:32])], steps=1)


def test_holdout_split_is_blockwise_disjoint_and_deterministic():
    mask = np.zeros((100, 130), np.uint8)
    mask[10:90, 5:120] = 2
    a_train, a_val = split_holdout(mask, 0.3, np.random.default_rng(0))
    b_train, b_val = split_holdout(mask, 0.3, np.random.default_rng(0))
    assert np.array_equal(a_val, b_val)
    assert not ((a_train > 0) & (a_val > 0)).any()
    assert np.array_equal((a_train > 0) | (a_val > 0), mask > 0)
    assert 0 < (a_val > 0).sum() < (mask > 0).sum()
    # hold-out pixels come in whole 32-pixel blocks: a block's corrections are all held out or none
    for by in range(0, 100, 32):
        for bx in range(0, 130, 32):
            held = a_val[by:by + 32, bx:bx + 32] > 0
            corrected = mask[by:by + 32, bx:bx + 32] > 0
            assert not held.any() or np.array_equal(held, corrected)


def test_holdout_is_stratified_by_class():
    """Every class with enough blocks gets some held out (at least 100 px when it can), never all of
    it; a class inside a single block is not held out at all."""
    from napari_dfa.training.finetune import MIN_HELD_OUT_PIXELS, split_holdout_stratified

    big = np.zeros((256, 256), np.uint8)
    big[:, :192] = 2  # 6×8 blocks of class 2
    big[:, 192:] = 3  # 2×8 blocks of class 3
    small = np.zeros((64, 64), np.uint8)
    small[5:15, 5:15] = 4  # one block of class 4 (100 px)
    (tr_a, va_a), (tr_b, va_b) = split_holdout_stratified([big, small], 5, 0.2, np.random.default_rng(0))
    for c in (2, 3):
        held = int((va_a == c).sum())
        assert MIN_HELD_OUT_PIXELS <= held <= int((big == c).sum()) / 2
        assert (tr_a == c).any()
    assert not (va_b > 0).any() and (tr_b == 4).sum() == 100
    assert not ((tr_a > 0) & (va_a > 0)).any()


def test_frozen_encoder_trains_only_after_the_encoder(tiny):
    rgb, _ = synth.generate_tile(seed=11, size=128)
    before = tiny.predict(rgb)
    target = int(np.bincount(before[24:104, 24:104].ravel(), minlength=6)[1:].argmin()) + 1
    mask = np.zeros((128, 128), np.uint8)
    mask[24:104, 24:104] = target
    result = finetune(tiny, [(rgb, mask)], steps=25, batch_size=2, crop=96, seed=1, frozen_encoder=True)
    new = result.segmenter
    for (name, a), b in zip(tiny.model.encoder.state_dict().items(), new.model.encoder.state_dict().values()):
        assert torch.equal(a, b), name  # the encoder did not move
    assert not torch.equal(tiny.model.decoder.class_tokens.weight, new.model.decoder.class_tokens.weight)
    assert all(p.requires_grad for p in new.model.encoder.parameters())  # frozen for that run only
    assert (new.predict(rgb)[mask > 0] == target).mean() > 0.8
    assert result.frozen_encoder and new.metadata["provenance"]["finetune"]["frozen_encoder"] is True
    name = tiny.class_names[target - 1]
    assert result.new_class_scores[name] > result.old_class_scores[name]
    assert result.correction_confusion.sum() == int((mask > 0).sum())
