"""Fine-tuning on corrections: predictions move toward the correction, the input model is untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dfa import synth
from napari_dfa.errors import Cancelled, DataError
from napari_dfa.model import ModelConfig, Segmenter, load_model
from napari_dfa.training import FinetuneResult, finetune
from napari_dfa.training.holdout import split_holdout_by_stroke


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
    for y in (24, 66):  # four strokes: whole strokes are held out to score the models on
        for x in (24, 66):
            mask[y:y + 38, x:x + 38] = target
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


def _strokes():
    """Class 2: six separate squares (one 30-px square beside another that touches it: one stroke),
    class 3: two strokes, class 4: one stroke, over two masks."""
    a = np.zeros((200, 260), np.uint8)
    for i in range(5):
        a[10:40, 10 + 50 * i:40 + 50 * i] = 2
    a[40:60, 10:40] = 2  # touches the first square: the same stroke
    a[100:130, 10:40] = 3
    a[100:130, 100:140] = 3
    b = np.zeros((64, 64), np.uint8)
    b[5:15, 5:15] = 4
    b[30:60, 30:60] = 2
    return a, b


def test_holdout_is_by_whole_strokes_disjoint_and_deterministic():
    from scipy import ndimage

    a, b = _strokes()
    first = split_holdout_by_stroke([a, b], 5, 0.3, np.random.default_rng(0))
    again = split_holdout_by_stroke([a, b], 5, 0.3, np.random.default_rng(0))
    for (tr, va), (tr2, va2), m in zip(first, again, (a, b)):
        assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
        assert not ((tr > 0) & (va > 0)).any() and np.array_equal((tr > 0) | (va > 0), m > 0)
        # every stroke lies wholly on one side
        for c in (2, 3, 4):
            comps, n = ndimage.label(m == c, structure=np.ones((3, 3), bool))
            for j in range(1, n + 1):
                held = va[comps == j] > 0
                assert held.all() or not held.any()


def test_holdout_is_stratified_by_class():
    """Every class with two strokes or more gets some held out (at least 100 px when it can), never
    all of it; a class of one stroke is not held out at all."""
    from napari_dfa.training.holdout import MIN_HELD_OUT_PIXELS

    a, b = _strokes()
    (tr_a, va_a), (tr_b, va_b) = split_holdout_by_stroke([a, b], 5, 0.2, np.random.default_rng(0))
    for c in (2, 3):
        held = int((va_a == c).sum() + (va_b == c).sum())
        assert MIN_HELD_OUT_PIXELS <= held <= int((a == c).sum() + (b == c).sum()) / 2 + 900
        assert (tr_a == c).any() or (tr_b == c).any()
    assert not (va_b == 4).any() and (tr_b == 4).sum() == 100


@pytest.mark.parametrize("folds", [2, 4])
def test_folds_hold_back_every_stroke_once_and_leave_each_class_something_to_learn(folds):
    """The pixel head's hold-out (cross-validation by whole strokes): every stroke of a class with
    two or more is held back in exactly one fold, each fold keeps a stroke of every class to train
    on, a class of one stroke and strokes the old model saw are never held back."""
    from scipy import ndimage

    from napari_dfa.training.holdout import all_stroke_signatures, fold_strokes

    a, b = _strokes()
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (*m.shape, 3), dtype=np.uint8) for m in (a, b)]
    maps = fold_strokes([a, b], 5, folds, np.random.default_rng(0))
    assert not (maps[1][b == 4] > 0).any()  # class 4 has one stroke
    for m, f in zip((a, b), maps):
        assert not (f[m == 0] > 0).any()
        for c in (2, 3):
            comps, n = ndimage.label(m == c, structure=np.ones((3, 3), bool))
            for j in range(1, n + 1):
                values = np.unique(f[comps == j])
                assert values.size == 1 and 1 <= values[0] <= folds  # whole, held back once
    for fold in range(1, folds + 1):
        for c in (2, 3):  # something of every class trains in every fold
            assert any(((m == c) & (f != fold)).any() for m, f in zip((a, b), maps))
    # The old model saw the left strokes of mask a: they always train.
    old_a = a.copy()
    old_a[:, 100:] = 0
    seen = set(all_stroke_signatures([(images[0], old_a)], 5))
    maps = fold_strokes([a, b], 5, folds, np.random.default_rng(0), images=images, seen=seen)
    assert not (maps[0][:, :100] > 0).any() and (maps[0][a == 3][:, None] > 0).sum() == 30 * 40


def test_frozen_encoder_trains_only_after_the_encoder(tiny):
    rgb, _ = synth.generate_tile(seed=11, size=128)
    before = tiny.predict(rgb)
    target = int(np.bincount(before[24:104, 24:104].ravel(), minlength=6)[1:].argmin()) + 1
    mask = np.zeros((128, 128), np.uint8)
    for y in (24, 66):  # four strokes: whole strokes are held out to score the models on
        for x in (24, 66):
            mask[y:y + 38, x:x + 38] = target
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


def test_strokes_the_old_model_was_trained_on_are_never_held_back():
    """The old model would be scored on its own training strokes: they train the new one, and the
    held-back strokes come from the new ones."""
    from napari_dfa.training.holdout import all_stroke_signatures

    a, b = _strokes()
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 255, (*m.shape, 3), dtype=np.uint8) for m in (a, b)]
    old_a = a.copy()
    old_a[:, 100:] = 0  # the old model saw the strokes on the left of mask a
    seen = set(all_stroke_signatures([(images[0], old_a)], 5))
    for seed in range(5):
        (tr, va), _ = split_holdout_by_stroke([a, b], 5, 0.5, np.random.default_rng(seed), images=images, seen=seen)
        assert not (va[:, :100] > 0).any()  # nothing it was trained on is held back
        assert (tr[:, :100] == a[:, :100]).all()  # ... and all of it trains
    # class 3 has one stroke the old model saw and one it did not: the new one is held back
    (tr, va), _ = split_holdout_by_stroke([a, b], 5, 0.5, np.random.default_rng(0), images=images, seen=seen)
    assert (va == 3).sum() == 30 * 40 and (tr == 3).sum() == 30 * 30


def _two_classes_four_strokes_each(size=128):
    """A real-looking tile with four separate 20² strokes of each of two classes."""
    rgb, _ = synth.generate_tile(seed=11, size=size)
    mask = np.zeros((size, size), np.uint8)
    for i, (y, x) in enumerate([(8, 8), (8, 70), (70, 8), (70, 70)]):
        mask[y:y + 20, x:x + 20] = 2
        mask[y + 30:y + 50, x + 30:x + 50] = 4
    return rgb, mask


def test_held_back_strokes_never_train_the_head_that_is_scored_on_them(tiny, monkeypatch):
    """Cross-validation by whole strokes: each fold's head trains without that fold's strokes, so
    over the folds every labelled vector is left out exactly once (a head trained on its own
    held-back strokes would score itself perfect and promote anything)."""
    from napari_dfa.training import head as H

    sizes = []
    real = H._fit

    def spy(hd, data, *args, **kwargs):
        sizes.append(len(data[2]))
        return real(hd, data, *args, **kwargs)

    monkeypatch.setattr(H, "_fit", spy)
    result = H.fit_head(tiny, [_two_classes_four_strokes_each()], steps=5, folds=4)
    *folds, final = sizes
    assert len(folds) == 4 and all(0 < n < final for n in folds)
    assert sum(final - n for n in folds) == final  # each stroke held back once, in one fold
    assert set(result.new_class_scores) == {"tumour", "other"}
    assert result.held_out_per_class == result.corrected_per_class


def test_a_second_round_scores_the_old_heads_strokes_by_refitting_it_without_them(tiny, monkeypatch):
    """A head fitted on round 1's strokes, then round 2 adds four more: round 1's strokes are
    evidence too (held back once each), scored for the old model by its recipe refitted without
    them, never by the old head that trained on them; the new strokes never train the refit."""
    from napari_dfa.training import head as H

    rgb, mask = _two_classes_four_strokes_each()
    first = mask.copy()
    first[64:] = 0  # round 1: the two strokes of each class in the top half
    round1 = H.fit_head(tiny, [(rgb, first)], steps=5, folds=4)
    seen = []
    real = H._fit

    def spy(hd, data, *args, **kwargs):
        seen.append((id(hd), len(data[2])))
        return real(hd, data, *args, **kwargs)

    monkeypatch.setattr(H, "_fit", spy)
    H.fit_head(tiny, [(rgb, first)], steps=5, folds=4)
    round1_size = seen[-1][1]  # every gathered vector of round 1's strokes
    seen.clear()
    result = H.fit_head(round1.segmenter, [(rgb, mask)], steps=5, folds=4)
    heads = [h for h, _ in seen]
    new_id, final = seen[-1]
    new_fits = [n for h, n in seen[:-1] if h == new_id]
    old_fits = [n for h, n in seen if h != new_id]
    assert len(new_fits) == 4 and len(old_fits) == 4 and len(set(heads)) == 2
    assert sum(final - n for n in new_fits) == final  # every stroke, old or new, held back once
    assert all(0 < n <= round1_size for n in old_fits)  # the refit sees round 1's strokes only
    assert sum(round1_size - n for n in old_fits) == round1_size  # each of them held back once
    assert result.held_out_per_class == result.corrected_per_class
    assert result.segmenter.metadata["provenance"]["finetune"]["old_refit"] is True
    # A first round (a model without a head) has nothing to refit.
    assert round1.segmenter.metadata["provenance"]["finetune"]["old_refit"] is False


def test_held_back_strokes_never_train_the_deep_finetune(tiny, monkeypatch):
    """The deep fine-tune's held-back strokes stay out of every training crop."""
    import importlib

    FT = importlib.import_module("napari_dfa.training.finetune")  # the module, not the function

    sample = _two_classes_four_strokes_each()
    plan = FT.plan_holdout(tiny, [sample], 0.2, 1)
    held = plan.splits[0][1] > 0
    assert held.any()
    seen = []
    real = FT._crop_box_around

    def spy(mask, size, shape, rng):
        seen.append(np.asarray(mask).copy())
        return real(mask, size, shape, rng)

    monkeypatch.setattr(FT, "_crop_box_around", spy)
    FT.finetune(tiny, [sample], steps=3, batch_size=2, crop=96, seed=1, frozen_encoder=True)
    assert seen and all(not (m[held] > 0).any() for m in seen)


def test_the_head_keeps_only_the_models_sure_answers_of_the_classes_asked():
    """Unverified cells train the head towards the model's answer only where it is sure (p >= 0.9)
    of a class in ``keep``: never a class the model never had, never a guess."""
    from napari_dfa.training.head import _kept_answers

    x = torch.randn(4, 7)
    logits = torch.tensor([[9.0, 0, 0], [0, 9.0, 0], [0, 0, 9.0], [1.0, 0.9, 0.8]])
    fx, fb, label, target = _kept_answers((x, logits), keep=[1, 3])
    assert label.tolist() == [0, 2] and target is None  # class 2 not kept, the last cell unsure; no carve
    torch.testing.assert_close(fx, x[[0, 2]])
    assert _kept_answers((x, logits), keep=[]) is None and _kept_answers(None, keep=[1]) is None


def test_keeping_the_models_sure_answers_limits_what_the_head_repaints():
    """The demo model on its own tissue, one stroke of another class over sure tissue: with the
    model's sure answers kept the head repaints less of the sample outside the stroke than without."""
    from napari_dfa.training.head import fit_head

    seg = load_model("demo")
    rgb, _ = synth.generate_tile(seed=5, size=256)
    base = seg.predict(rgb)
    mask = np.zeros(base.shape, np.uint8)
    mask[100:140, 100:140] = 5 if (base[100:140, 100:140] != 5).mean() > 0.5 else 1
    mask[10:30, 10:30] = base[10:30, 10:30]  # and a few pixels it had right
    mask[200:230, 200:230] = base[200:230, 200:230]
    changed = {}
    for keep in ([], list(range(1, 6))):
        new = fit_head(seg, [(rgb, mask)], steps=60, keep=keep).segmenter.predict(rgb)
        changed[len(keep)] = float(((new != base) & (mask == 0)).mean())
    assert changed[5] < changed[0], changed
