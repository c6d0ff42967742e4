"""Checkpoints: exact round trips, atomic writes, and refusal of everything that is not ours."""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import napari_dfa
from napari_dfa.errors import CheckpointError
from napari_dfa.model import ModelConfig, Segmenter, load_model
from napari_dfa.model import segmenter as segmenter_module
from bcss_classes import COLORS, NAMES

FREQS = [0.3, 0.35, 0.2, 0.1, 0.05]


@pytest.fixture(autouse=True)
def _seeded(one_torch_thread):
    torch.manual_seed(0)


@pytest.fixture
def segmenter() -> Segmenter:
    seg = Segmenter.from_config(ModelConfig.from_preset("tiny", num_classes=5, bias_mode="dfa-anchored"),
                                class_names=NAMES, class_colors=COLORS, frequencies=FREQS, mpp=0.25)
    # Weights that are not the initialisation, so a loader that rebuilt the model would be caught.
    with torch.no_grad():
        for p in seg.model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    seg.record_bias(epoch=0)
    seg.record_bias(epoch=1, val_mdice=0.5)
    seg.metadata["training"] = {"recipe": "synthetic.toml", "epochs": 2}
    return seg


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (96, 80, 3), dtype=np.uint8)


def test_save_load_round_trips_bit_exactly(tmp_path, segmenter, rgb):
    path = segmenter.save(tmp_path / "model.safetensors", provenance={"data": "synthetic seed 0",
                                                                       "corrections": 0})
    loaded = load_model(path)
    a, b = segmenter.model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert loaded.config == segmenter.config
    assert loaded.class_names == NAMES and loaded.class_colors == COLORS
    np.testing.assert_array_equal(loaded.frequencies, segmenter.frequencies)
    assert loaded.mpp == 0.25
    assert loaded.metadata["bias_history"] == segmenter.metadata["bias_history"]
    assert loaded.metadata["training"] == {"recipe": "synthetic.toml", "epochs": 2}
    prov = loaded.metadata["provenance"]
    assert prov == segmenter.metadata["provenance"]
    assert prov["data"] == "synthetic seed 0" and prov["napari_dfa_version"] == napari_dfa.__version__
    assert "created" in prov
    np.testing.assert_array_equal(loaded.class_bias(), segmenter.class_bias())
    np.testing.assert_array_equal(loaded.predict(rgb), segmenter.predict(rgb))
    torch.testing.assert_close(loaded.predict_logits(rgb[None])["logits"],
                               segmenter.predict_logits(rgb[None])["logits"], rtol=0, atol=0)

    # Re-saving the loaded model unchanged gives the same tensors and metadata.
    again = loaded.save(tmp_path / "again.safetensors")
    with safe_open(str(path), "pt") as f1, safe_open(str(again), "pt") as f2:
        assert f1.metadata() == f2.metadata()
    # Provenance set in memory (as fine-tuning does) is stamped when saved.
    loaded.metadata["provenance"] = {"data": "corrections"}
    stamped = load_model(loaded.save(tmp_path / "ft.safetensors")).metadata["provenance"]
    assert stamped["data"] == "corrections" and "created" in stamped and "napari_dfa_version" in stamped
    # A fine-tuned child records its parent.
    child = loaded.save(tmp_path / "child.safetensors", provenance={"corrections": 12})
    assert load_model(child).metadata["provenance"]["parent"] == str(path)


def test_metadata_is_plain_json_strings(tmp_path, segmenter):
    path = segmenter.save(tmp_path / "m.safetensors")
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "napari-dfa" and meta["format_version"] == "2"
    assert meta["bias_mode"] == "dfa-anchored"
    assert json.loads(meta["class_names"]) == NAMES
    assert json.loads(meta["config"])["num_classes"] == 5
    np.testing.assert_allclose(json.loads(meta["frequencies"]), FREQS, rtol=1e-6)
    assert json.loads(meta["mpp"]) == 0.25


def test_half_precision_save_is_smaller_and_loads(tmp_path, segmenter, rgb):
    full = segmenter.save(tmp_path / "f32.safetensors")
    half = segmenter.save(tmp_path / "f16.safetensors", dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_model(half)
    assert next(loaded.model.parameters()).dtype == torch.float32
    agree = (loaded.predict(rgb) == segmenter.predict(rgb)).mean()
    assert agree > 0.99


def test_writes_are_atomic(tmp_path, segmenter, monkeypatch):
    path = segmenter.save(tmp_path / "model.safetensors")
    original = path.read_bytes()
    import safetensors.torch

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        segmenter.save(path)
    assert path.read_bytes() == original  # the old model is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left


def test_torch_save_pickle_is_refused_without_unpickling(tmp_path, segmenter):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for name, payload in (("model.pt", segmenter.model.state_dict()), ("evil.pth", {"x": Evil()}),
                          ("disguised.safetensors", segmenter.model.state_dict())):
        torch.save(payload, tmp_path / name)
        with pytest.raises(CheckpointError, match="pickle") as err:
            load_model(tmp_path / name)
        assert name in str(err.value)
    # legacy (non-zip) pickle streams too
    (tmp_path / "legacy.safetensors").write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    with pytest.raises(CheckpointError, match="legacy.safetensors.*pickle"):
        load_model(tmp_path / "legacy.safetensors")
    assert not marker.exists()


def test_sam_pickle_gets_a_conversion_hint(tmp_path):
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(2, 3, 16, 16),
                "mask_decoder.iou_token.weight": torch.zeros(1, 4)}, tmp_path / "sam_vit_b_01ec64.pth")
    with pytest.raises(CheckpointError, match=r"SAM weights.*python -m napari_dfa\.model\.import_sam .*sam_vit_b_01ec64\.pth"):
        load_model(tmp_path / "sam_vit_b_01ec64.pth")


@pytest.mark.parametrize("damage", ["truncated", "half", "random", "empty", "huge_header", "bad_json"])
def test_malformed_files_are_refused(tmp_path, segmenter, damage):
    good = segmenter.save(tmp_path / "good.safetensors").read_bytes()
    bad = tmp_path / f"{damage}.safetensors"
    if damage == "truncated":
        bad.write_bytes(good[:-100])
    elif damage == "half":
        bad.write_bytes(good[: len(good) // 2])
    elif damage == "random":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "huge_header":
        bad.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    else:
        bad.write_bytes(struct.pack("<Q", 12) + b"{not json!!}")
    with pytest.raises(CheckpointError) as err:
        load_model(bad)
    assert bad.name in str(err.value)


def test_foreign_safetensors_is_refused(tmp_path, segmenter):
    path = tmp_path / "encoder.safetensors"
    save_file({k: v.contiguous() for k, v in segmenter.model.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="not a napari-dfa checkpoint"):
        load_model(path)


def _rewrite(path, tensors=None, **meta_changes):
    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    save_file(tensors(state) if tensors else state, str(path), metadata={**meta, **meta_changes})


def test_tensors_that_do_not_match_the_config_are_refused(tmp_path, segmenter):
    path = segmenter.save(tmp_path / "m.safetensors")
    _rewrite(path, tensors=lambda s: {k: v for k, v in s.items() if not k.startswith("decoder.mask_mlp")})
    with pytest.raises(CheckpointError, match=r"m\.safetensors.*do not match.*missing"):
        load_model(path)

    path = segmenter.save(tmp_path / "k.safetensors")
    cfg = json.loads(ModelConfig.from_preset("tiny", num_classes=6).to_json())
    _rewrite(path, config=json.dumps(cfg), class_names=json.dumps(NAMES + ["x"]),
             class_colors=json.dumps([list(c) for c in COLORS] + [[0, 0, 0]]),
             frequencies=json.dumps(FREQS + [0.0]))
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_model(path)

    path = segmenter.save(tmp_path / "n.safetensors")
    _rewrite(path, class_names=json.dumps(NAMES[:3]))
    with pytest.raises(CheckpointError, match="class_names must list 5"):
        load_model(path)


def test_nan_weights_are_refused(tmp_path, segmenter):
    path = segmenter.save(tmp_path / "diverged.safetensors")

    def poison(state):
        state["decoder.mask_mlp.layers.0.weight"][0, 0] = float("nan")
        return state

    _rewrite(path, tensors=poison)
    with pytest.raises(CheckpointError, match="diverged.safetensors.*NaN"):
        load_model(path)


def test_newer_format_version_is_refused(tmp_path, segmenter):
    path = segmenter.save(tmp_path / "m.safetensors")
    _rewrite(path, format_version="99")
    with pytest.raises(CheckpointError, match="upgrade napari-dfa"):
        load_model(path)


def test_older_format_version_is_refused(tmp_path, segmenter):
    """Format 1 = the mask head without the decoder-updated memory: a different layout."""
    path = segmenter.save(tmp_path / "old.safetensors")
    _rewrite(path, format_version="1",
             tensors=lambda s: {k: v for k, v in s.items() if not k.startswith("decoder.memory_upsampler")})
    with pytest.raises(CheckpointError, match=r"old\.safetensors.*format version 1.*older napari-dfa.*Retrain"):
        load_model(path)


def test_written_file_has_normal_permissions(tmp_path, segmenter):
    old = os.umask(0o022)
    try:
        path = segmenter.save(tmp_path / "perm.safetensors")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644
    old = os.umask(0o077)
    try:
        path = segmenter.save(tmp_path / "private.safetensors")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o600


def test_missing_file_and_missing_demo(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.safetensors")
    monkeypatch.setattr(segmenter_module, "DEMO_MODEL", tmp_path / "models" / "demo.safetensors")
    with pytest.raises(CheckpointError, match="demo model is missing"):
        load_model("demo")


def test_demo_name_resolves_to_the_bundled_file(tmp_path, monkeypatch, segmenter, rgb):
    demo = segmenter.save(tmp_path / "models" / "demo.safetensors")
    monkeypatch.setattr(segmenter_module, "DEMO_MODEL", demo)
    np.testing.assert_array_equal(load_model("demo").predict(rgb), segmenter.predict(rgb))
    assert napari_dfa.load_model is load_model


def test_save_refuses_other_suffixes(tmp_path, segmenter):
    with pytest.raises(CheckpointError, match=".safetensors"):
        segmenter.save(tmp_path / "model.pt")
    assert not os.listdir(tmp_path)
