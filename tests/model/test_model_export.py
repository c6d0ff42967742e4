"""Model cards in every checkpoint and ``napari-dfa export-model --bioimageio``: a package that
``bioimageio.spec`` validates, whose TorchScript gives napari-dfa's own labels without napari-dfa."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from napari_dfa import synth
from napari_dfa.cli import main
from napari_dfa.model import DEMO_MODEL, ModelConfig, Segmenter, load_model

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--set", "model.preset=tiny", "--set", "data.crop=64", "--set", "data.synth_tile=64",
         "--set", "data.synth_n_train=6", "--set", "data.synth_n_val=2", "--set", "data.synth_n_test=2",
         "--set", "batch_size=4", "--set", "warmup_steps=0", "--device", "cpu", "--no-plots"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _stored_card(path) -> dict:
    with safe_open(str(path), framework="pt") as fh:
        return json.loads(fh.metadata()["model_card"])


def test_demo_model_carries_its_card():
    card = _stored_card(DEMO_MODEL)
    assert card["license"] == "BSD-3-Clause"
    assert card["intended_use"].startswith("demo, synthetic tissue, not for diagnosis")
    assert "synthetic" in card["training_data"] and "no patient data" in card["training_data"]
    assert card["metrics"]["test_mdice"] == pytest.approx(0.9751, abs=1e-4)
    assert card["classes"] == load_model("demo").class_names and card["mpp"] == 0.5
    manifest = json.loads(DEMO_MODEL.with_suffix(".json").read_text())
    assert manifest["model_card"] == card and manifest["size_bytes"] == DEMO_MODEL.stat().st_size


def test_every_checkpoint_gets_a_card_that_follows_new_weights(tmp_path):
    # A real (tiny) training run: its checkpoint's card names the data and the validation scores.
    out = tmp_path / "run"
    assert main(["train", "--config", str(REPO / "training" / "synthetic.toml"), "--epochs", "1",
                 "--out", str(out), *SMALL]) == 0
    card = _stored_card(out / "best.safetensors")
    assert card["license"] == "unspecified" and "not for diagnosis" in card["intended_use"]
    assert card["training_data"] != "unspecified"
    assert "validation_mdice" in card["metrics"] and 0.0 <= card["metrics"]["validation_mdice"] <= 1.0

    # The author's fields stay through a re-save and a new run; the run's metrics replace the old.
    seg = load_model(out / "best.safetensors")
    seg.save(tmp_path / "licensed.safetensors", model_card={"license": "CC-BY-4.0", "authors": ["A. Pathologist"]})
    again = load_model(tmp_path / "licensed.safetensors")
    again.save(tmp_path / "copy.safetensors")
    copy = _stored_card(tmp_path / "copy.safetensors")
    assert copy["license"] == "CC-BY-4.0" and copy["metrics"] == card["metrics"]
    again.save(tmp_path / "tuned.safetensors", provenance={"data": "corrections", "corrections": {
        "corrected_pixels": 1234}, "finetune": {"old_score": 0.5, "new_score": 0.6}})
    tuned = _stored_card(tmp_path / "tuned.safetensors")
    assert tuned["license"] == "CC-BY-4.0" and tuned["authors"] == ["A. Pathologist"]
    assert "corrections" in tuned["training_data"] and "1234" in tuned["training_data"]
    assert tuned["metrics"] == {"held_out_score_before_finetune": 0.5, "held_out_score_after_finetune": 0.6}


def test_export_demo_as_bioimageio_package_that_validates(tmp_path):
    from bioimageio.spec import load_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    out = tmp_path / "demo.zip"
    assert main(["export-model", "--model", "demo", "--bioimageio", str(out)]) == 0
    names = set(zipfile.ZipFile(out).namelist())
    assert {"rdf.yaml", "README.md", "cover.png", "weights.pt", "test_input.npy", "test_output.npy"} <= names

    descr = load_description(out, perform_io_checks=True)  # checksums, files, sample tensors
    summary = descr.validation_summary
    assert isinstance(descr, ModelDescr), summary.format()
    assert summary.status in ("valid-format", "passed"), summary.format()
    assert str(descr.license) == "BSD-3-Clause"
    assert [str(c) for c in descr.outputs[0].axes[1].channel_names] == load_model("demo").class_names
    with zipfile.ZipFile(out) as zf:
        readme = zf.read("README.md").decode()
    assert "not for diagnosis" in readme and "test_mdice" in readme

    # The TorchScript alone (no napari-dfa) reproduces its test output, and on another tile size
    # its argmax + 1 are napari-dfa's labels.
    extracted = tmp_path / "pkg"
    zipfile.ZipFile(out).extractall(extracted)
    net = torch.jit.load(str(extracted / "weights.pt"))
    with torch.no_grad():
        x = np.load(extracted / "test_input.npy")
        np.testing.assert_allclose(net(torch.from_numpy(x)).numpy(), np.load(extracted / "test_output.npy"),
                                   atol=1e-5)
        rgb, _ = synth.generate_tile(seed=11, size=224)
        rgb = rgb[:192]  # 192 × 224: not the traced size
        rgb_before = rgb.copy()
        probs = net(torch.from_numpy(rgb.transpose(2, 0, 1)[None].astype(np.float32))).numpy()
        # Half of it glass: the export leaves the glass out of its GroupNorm statistics as we do.
        rgb[:, 96:] = (236, 234, 238)
        glass = net(torch.from_numpy(rgb.transpose(2, 0, 1)[None].astype(np.float32))).numpy()
    assert probs.shape == (1, 5, 192, 224)
    np.testing.assert_array_equal(probs[0].argmax(axis=0) + 1, load_model("demo").predict(rgb_before))
    np.testing.assert_array_equal(glass[0].argmax(axis=0) + 1, load_model("demo").predict(rgb))


def test_export_needs_an_spdx_licence(tmp_path, capsys):
    torch.manual_seed(0)
    seg = Segmenter.from_config(ModelConfig.from_preset("tiny", num_classes=3), class_names=["a", "b", "c"], mpp=1.0)
    model = seg.save(tmp_path / "mine.safetensors", provenance={"data": "my slides"})
    out = tmp_path / "mine.zip"
    assert main(["export-model", "--model", str(model), "--bioimageio", str(out)]) == 1
    assert "--license" in capsys.readouterr().err and not out.exists()
    assert main(["export-model", "--model", str(model), "--bioimageio", str(out), "--license", "CC-BY-4.0",
                 "--tile", "64"]) == 0
    from bioimageio.spec import load_description

    descr = load_description(out, perform_io_checks=True)
    assert descr.validation_summary.status in ("valid-format", "passed"), descr.validation_summary.format()
    assert str(descr.license) == "CC-BY-4.0"
