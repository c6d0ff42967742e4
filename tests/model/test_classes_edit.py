"""A pathologist's own classes: kept classes keep their learned rows, new ones get a warm start and
learn from corrections, renames and removals move rows, and the result saves and loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dfa.errors import DataError
from napari_dfa.model import load_model
from napari_dfa.model.bias import log_prior
from napari_dfa.model.classes_edit import per_class_axes, with_classes
from napari_dfa.synth import generate_tile
from napari_dfa.training.finetune import finetune

DEMO = ["inflammatory", "tumour", "stroma", "other", "necrosis"]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    torch.manual_seed(0)


def _rows(seg, key):
    return seg.model.state_dict()[key]


def test_per_class_tensors_are_found_by_shape(demo):
    axes = per_class_axes(demo.config)
    assert {"decoder.class_tokens.weight", "decoder.token_pe.weight", "bias.delta", "bias.frequencies"} <= set(axes)
    assert not any(k.startswith("encoder.") for k in axes)


def test_adding_a_class_keeps_every_learned_tensor_and_the_predictions(demo):
    new = with_classes(demo, [*DEMO, "artefact"], corrected_frequencies={"artefact": 500, "tumour": 1500})
    assert new.class_names == [*DEMO, "artefact"] and new.num_classes == 6
    old_state, new_state = demo.model.state_dict(), new.model.state_dict()
    axes = per_class_axes(demo.config)
    for key, old in old_state.items():
        if key in axes:
            assert torch.equal(new_state[key][:5], old) or key == "bias.frequencies", key
        else:
            assert torch.equal(new_state[key], old), key  # encoder, FPN, decoder layers, mask head
    # The new token starts near the mean of the learned ones, not on any one of them.
    tokens = new_state["decoder.class_tokens.weight"]
    mean = old_state["decoder.class_tokens.weight"].mean(0)
    assert torch.linalg.norm(tokens[5] - mean) < 0.5 * torch.linalg.norm(tokens[:5] - mean, dim=1).min()
    # δ of the new class is the model's warm start from its corrected share (0.25 of 2000 pixels).
    f = torch.as_tensor(new.frequencies, dtype=torch.float32)
    assert f[5].item() == pytest.approx(0.25, abs=1e-6)
    prior = log_prior(f, new.config.gamma)
    expected = new.config.delta_init_scale * (prior - prior.mean())
    assert new.class_bias()[5] == pytest.approx(float(expected[5]), abs=1e-5)
    np.testing.assert_array_equal(new.class_bias()[:5], demo.class_bias())
    # Kept classes keep their share of the training pixels, scaled into the remaining 0.75.
    np.testing.assert_allclose(new.frequencies[:5], demo.frequencies / demo.frequencies.sum() * 0.75, rtol=1e-5)
    # The model does not start painting the class nobody has taught it yet.
    rgb, _ = generate_tile(seed=101, size=256)
    before, after = demo.predict(rgb), new.predict(rgb)
    assert (after == 6).sum() == 0
    assert (before == after).mean() > 0.97
    # The input model is untouched.
    assert demo.class_names == DEMO and demo.num_classes == 5


def test_rename_keeps_tensors_and_recolour(tmp_path, demo):
    new = with_classes(demo, ["inflammatory", "tumour", "connective", "other", "necrosis"],
                       colors={"tumour": (10, 20, 30)}, renames={"stroma": "connective"})
    for key, old in demo.model.state_dict().items():
        assert torch.equal(new.model.state_dict()[key], old), key
    assert new.class_colors[1] == (10, 20, 30)
    assert new.class_colors[2] == demo.class_colors[2]  # the renamed class keeps its colour
    rgb, _ = generate_tile(seed=102, size=192)
    np.testing.assert_array_equal(new.predict(rgb), demo.predict(rgb))
    path = new.save(tmp_path / "renamed.safetensors")
    loaded = load_model(path)
    assert loaded.class_names == ["inflammatory", "tumour", "connective", "other", "necrosis"]
    assert loaded.class_colors[1] == (10, 20, 30)
    assert loaded.metadata["provenance"]["classes_edit"]["renamed"] == {"stroma": "connective"}
    for key, t in new.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], t), key


def test_remove_and_reorder_drop_rows(tmp_path, demo):
    new = with_classes(demo, ["necrosis", "tumour", "Stroma"])
    assert new.num_classes == 3 and new.class_names == ["necrosis", "tumour", "Stroma"]
    order = [4, 1, 2]
    for key in ("decoder.class_tokens.weight", "decoder.token_pe.weight", "bias.delta"):
        assert torch.equal(_rows(new, key), _rows(demo, key)[order]), key
    np.testing.assert_allclose(new.frequencies, demo.frequencies[order] / demo.frequencies[order].sum(), rtol=1e-6)
    assert new.class_colors == [demo.class_colors[i] for i in order]
    hist = new.bias_history()
    assert hist and np.allclose(hist[-1][1], demo.bias_history()[-1][1][order])
    loaded = load_model(new.save(tmp_path / "three.safetensors"))
    assert loaded.class_names == ["necrosis", "tumour", "Stroma"] and loaded.num_classes == 3
    rgb, _ = generate_tile(seed=103, size=128)
    assert set(np.unique(loaded.predict(rgb))) <= {1, 2, 3}


def test_bad_class_lists_are_refused_with_names(demo):
    with pytest.raises(DataError, match="repeated: Tumour, tumour"):
        with_classes(demo, ["tumour", "Tumour"])
    with pytest.raises(DataError, match="cannot rename 'fat'"):
        with_classes(demo, ["tumour", "adipose"], renames={"fat": "adipose"})
    with pytest.raises(DataError, match="not in the new class list"):
        with_classes(demo, ["tumour"], renames={"stroma": "connective"})
    with pytest.raises(DataError, match="2 colours for 3 classes"):
        with_classes(demo, ["tumour", "stroma", "fat"], colors=[(1, 2, 3), (4, 5, 6)])


@pytest.mark.slow
def test_a_new_class_learns_from_corrections(demo):
    """Paint the tumour of a tile as a new class "artefact", fine-tune a few real steps: the model
    now calls most of those pixels artefact (it called none before)."""
    rgb, truth = generate_tile(seed=11, size=256)
    corrections = truth.copy()
    corrections[truth == 2] = 6
    names = [*DEMO, "artefact"]
    counts = {n: int((corrections == i + 1).sum()) for i, n in enumerate(names)}
    start = with_classes(demo, names, corrected_frequencies=counts)
    assert (start.predict(rgb) == 6).mean() == 0
    result = finetune(start, [(rgb, corrections)], steps=40, batch_size=2, crop=128, seed=0)
    labels = result.segmenter.predict(rgb)
    assert (labels[truth == 2] == 6).mean() > 0.5
    assert result.segmenter.class_names == names
