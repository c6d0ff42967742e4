"""`napari-dfa train` / `evaluate` as a user runs them: recipes, run folder, resume, BCSS layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_dfa import synth
from napari_dfa.classes import BCSS
from napari_dfa.cli import main
from napari_dfa.model import load_model, read_checkpoint
from napari_dfa.training.datasets import write_sampath

REPO = Path(__file__).resolve().parents[2]
# Shrinks the synthetic recipe to seconds: tiny model, 64-pixel tiles, a dozen tiles.
SMALL = ["--set", "model.preset=tiny", "--set", "data.crop=64", "--set", "data.synth_tile=64",
         "--set", "data.synth_n_train=6", "--set", "data.synth_n_val=2", "--set", "data.synth_n_test=2",
         "--set", "batch_size=4", "--set", "warmup_steps=0", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_train_synthetic_recipe_writes_checkpoints_logs_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--config", str(REPO / "training" / "synthetic.toml"), "--epochs", "2", "--out", str(out),
               *SMALL])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "best epoch" in stdout and "| necrosis |" in stdout
    for name in ("best.safetensors", "last.safetensors", "last_state.safetensors", "history.csv", "history.json",
                 "recipe.json"):
        assert (out / name).is_file(), name
    for png in ("loss.png", "dice.png", "bias.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 200
    hist = json.loads((out / "history.json").read_text())
    assert hist["class_names"] == list(BCSS.names) and len(hist["prior_bias"]) == 5
    assert [r["epoch"] for r in hist["epochs"]] == [1, 2]
    for name in BCSS.names:
        assert isinstance(hist["epochs"][-1][f"b_{name}"], float)
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "train_loss", "val_loss", "val_mdice", "dice_tumour", "iou_tumour", "b_necrosis"} <= set(header)
    seg = load_model(out / "best.safetensors")
    assert seg.config.preset == "tiny" and seg.config.bias_mode == "dfa"


def test_resume_continues_to_the_same_weights(tmp_path):
    cfg = str(REPO / "training" / "synthetic.toml")
    const = ["--set", 'schedule="constant"']  # with a constant LR, --epochs 1 + resume to 2 == 2 epochs
    assert main(["train", "--config", cfg, "--epochs", "2", "--out", str(tmp_path / "a"), "--no-plots",
                 *SMALL, *const]) == 0
    assert main(["train", "--config", cfg, "--epochs", "1", "--out", str(tmp_path / "b"), "--no-plots",
                 *SMALL, *const]) == 0
    assert main(["train", "--config", cfg, "--epochs", "2", "--out", str(tmp_path / "b"), "--no-plots", "--resume",
                 *SMALL, *const]) == 0
    a = read_checkpoint(tmp_path / "a" / "last.safetensors").state_dict
    b = read_checkpoint(tmp_path / "b" / "last.safetensors").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


def _bcss_fixture(root: Path) -> Path:
    """A few tiny tiles in the SAM-Path layout with BCSS's class ids (0 outside ROI, 1..5)."""
    items = []
    for i, fold in enumerate([1, 1, 2, 2, 3, 4, 0, 0, -1, -1]):
        rgb, mask = synth.generate_tile(seed=100 + i, size=64)  # synthetic labels use BCSS's ids
        items.append((f"TCGA-XX-{i:04d}_xmin0_ymin0", rgb, mask, fold))
    write_sampath(root, items, csv_name="BCSS_cv.csv")
    return root


def test_bcss_layout_trains_and_evaluates_through_the_bcss_recipe(tmp_path, capsys):
    data = _bcss_fixture(tmp_path / "BCSS")
    out = tmp_path / "run"
    # The paper recipe needs SAM ViT-B on a GPU; the fixture swaps in the tiny CPU model.
    shrink = ["--set", "model.preset=tiny", "--set", 'model.encoder_weights=""', "--set", "model.freeze_encoder=false",
              "--set", "data.crop=64", "--set", "batch_size=4", "--set", "accumulate=1", "--set", "num_workers=0",
              "--set", "warmup_steps=0", "--set", "lr=3e-3", "--set", "step_epochs=[]"]
    rc = main(["train", "--config", str(REPO / "training" / "bcss.toml"), "--data", str(data), "--out", str(out),
               "--epochs", "2", "--device", "cpu", "--no-plots", *shrink])
    assert rc == 0
    seg = load_model(out / "best.safetensors")
    assert seg.class_names == list(BCSS.names) and seg.mpp == 0.25
    report_path = tmp_path / "eval.json"
    rc = main(["evaluate", "--model", str(out / "best.safetensors"), "--data", str(data), "--split", "test",
               "--json", str(report_path), "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| tumour |" in printed and "**mean**" in printed
    report = json.loads(report_path.read_text())
    for name in BCSS.names:
        assert {"dice", "iou"} <= set(report[name])
    # the report agrees with a direct count on the test tiles
    gt = sum(int((np.array(Image.open(p)) == 2).sum()) for p in sorted((data / "mask").glob("*0008*.png")) +
             sorted((data / "mask").glob("*0009*.png")))
    assert report["tumour"]["gt_pixels"] == gt


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    data = _bcss_fixture(tmp_path / "BCSS")
    (data / "BCSS_cv.csv").write_text("image,split\nx,1\n")
    rc = main(["evaluate", "--model", "demo", "--data", str(data), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "BCSS_cv.csv" in err and "img_id,fold" in err and "Traceback" not in err
    rc = main(["train", "--config", str(REPO / "training" / "bcss.toml"), "--data", str(tmp_path / "missing"),
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "missing" in err and "not found" in err
    rc = main(["train", "--config", str(REPO / "training" / "synthetic.toml"), "--set", "data.crop=70"])
    assert rc == 1 and "multiple of 32" in capsys.readouterr().err


def test_demo_model_scores_well_on_fresh_synthetic_tiles(tmp_path):
    # The bundled model is what `make demo` and the GUI use: it must really segment synthetic H&E.
    items = [(f"s{i}", *synth.generate_tile(seed=5000 + i, size=128), -1) for i in range(4)]
    data = write_sampath(tmp_path / "fresh", items)
    out = tmp_path / "e.json"
    assert main(["evaluate", "--model", "demo", "--data", str(data), "--json", str(out), "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    assert report["_mean"]["dice"] > 0.7, report["_mean"]
