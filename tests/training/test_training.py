"""The training module end to end on tiny data: overfitting, resume, DDP, recipes, bad data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_dfa import synth
from napari_dfa.classes import BCSS
from napari_dfa.errors import Cancelled, ConfigError, DataError
from napari_dfa.model import load_model, read_checkpoint
from napari_dfa.training import SamPathDataset, TrainConfig, class_frequencies, evaluate, train
from napari_dfa.training.datasets import synthetic_root, write_sampath

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_recipe(root, **changes) -> TrainConfig:
    cfg = TrainConfig(name="t", epochs=2, batch_size=4, lr=3e-3, schedule="constant", model={"preset": "tiny"})
    cfg = cfg.replace(data={"kind": "sampath", "root": str(root), "classes": "bcss", "crop": 64})
    return cfg.replace(**changes) if changes else cfg


@pytest.fixture
def small_set(tmp_path):
    items = [(f"t{i}", *synth.generate_tile(seed=i, size=64), f) for i, f in enumerate([1, 2, 3, 4, 1, 2, 0, 0, -1])]
    return write_sampath(tmp_path / "ds", items)


def test_tiny_overfits_a_handful_of_synthetic_tiles(tmp_path):
    # Four tiles, validated on the very same tiles: a working model + loss + optimiser memorises them.
    tiles = [synth.generate_tile(seed=s, size=64) for s in range(4)]
    items = [(f"a{i}", rgb, m, 1) for i, (rgb, m) in enumerate(tiles)]
    items += [(f"b{i}", rgb, m, 0) for i, (rgb, m) in enumerate(tiles)]
    root = write_sampath(tmp_path / "overfit", items)
    cfg = tiny_recipe(root, epochs=60, lr=4e-3).replace(augment={"flip": False, "rot90": False, "stain": 0.0,
                                                                  "brightness": 0.0})
    result = train(cfg, out_dir=tmp_path / "run", device="cpu", plots=False)
    assert result.best_mdice > 0.85, result.history[-1]
    seg = load_model(result.best_path)
    labels = seg.predict(tiles[0][0])
    keep = tiles[0][1] > 0
    assert (labels[keep] == tiles[0][1][keep]).mean() > 0.9


def test_resume_after_interruption_is_bit_identical(small_set, tmp_path):
    cfg = tiny_recipe(small_set, epochs=3, schedule="cosine", warmup_steps=2)
    full = train(cfg, out_dir=tmp_path / "full", device="cpu", plots=False)
    calls = {"n": 0}

    def cancel_in_epoch_2():
        calls["n"] += 1
        return calls["n"] > 3  # 6 training tiles / batch 4 = 2 batches per epoch

    with pytest.raises(Cancelled):
        train(cfg, out_dir=tmp_path / "part", device="cpu", plots=False, cancel=cancel_in_epoch_2)
    assert json.loads((tmp_path / "part" / "history.json").read_text())["epochs"][-1]["epoch"] == 1
    resumed = train(cfg, out_dir=tmp_path / "part", device="cpu", plots=False, resume=True)
    a = read_checkpoint(full.last_path).state_dict
    b = read_checkpoint(resumed.last_path).state_dict
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in full.history] == [r["train_loss"] for r in resumed.history]


def test_loader_workers_give_the_same_weights(small_set, tmp_path):
    # Augmentation follows (seed, epoch, index) even inside persistent worker processes.
    cfg = tiny_recipe(small_set, epochs=2)
    a = train(cfg, out_dir=tmp_path / "w0", device="cpu", plots=False)
    b = train(cfg.replace(num_workers=1), out_dir=tmp_path / "w1", device="cpu", plots=False)
    sa, sb = read_checkpoint(a.last_path).state_dict, read_checkpoint(b.last_path).state_dict
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_without_a_run_is_a_clear_error(small_set, tmp_path):
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(tiny_recipe(small_set), out_dir=tmp_path / "empty", device="cpu", resume=True)


def test_checkpoint_carries_frequencies_bias_history_and_provenance(small_set, tmp_path):
    result = train(tiny_recipe(small_set, epochs=2), out_dir=tmp_path / "run", device="cpu", plots=False)
    seg = load_model(result.last_path)
    f = class_frequencies(SamPathDataset(small_set, split="train", class_set=BCSS))
    np.testing.assert_allclose(seg.frequencies, f, atol=1e-6)
    assert seg.class_names == list(BCSS.names)
    assert seg.mpp == 0.5
    hist = seg.metadata["bias_history"]
    assert [h["epoch"] for h in hist] == [1, 2] and len(hist[0]["bias"]) == 5
    np.testing.assert_allclose(hist[-1]["bias"], seg.class_bias(), atol=1e-5)
    assert seg.metadata["provenance"]["data"] == str(small_set)
    # δ trained: b_c moved away from the warm start
    assert not np.allclose(seg.class_bias(), 0.5 * seg.prior_bias(), atol=1e-6)


def test_logit_adjusted_training_changes_the_loss_not_the_model(small_set, tmp_path):
    """logit_adjust: the same network and mode none; only the training loss sees τ·log f_c, so the
    run differs from a plain one while the saved model predicts with its own logits."""
    plain = train(tiny_recipe(small_set, model={"bias_mode": "none"}), out_dir=tmp_path / "plain", device="cpu",
                  plots=False)
    adjusted = train(tiny_recipe(small_set, model={"bias_mode": "none"}, logit_adjust_tau=1.0),
                     out_dir=tmp_path / "la", device="cpu", plots=False)
    assert all(np.isfinite(r["train_loss"]) for r in adjusted.history)
    assert adjusted.history[0]["train_loss"] != plain.history[0]["train_loss"]
    seg = load_model(adjusted.last_path)
    assert seg.config.bias_mode == "none" and not seg.class_bias().any()
    assert seg.metadata["train"]["recipe"]["logit_adjust_tau"] == 1.0
    with pytest.raises(ConfigError, match="logit_adjust_tau"):
        tiny_recipe(small_set, logit_adjust_tau=-1.0)


def test_trainer_trains_dfa_out(small_set, tmp_path):
    result = train(tiny_recipe(small_set, model={"bias_mode": "dfa-out"}), out_dir=tmp_path / "run", device="cpu",
                   plots=False)
    seg = load_model(result.last_path)
    assert seg.config.bias_mode == "dfa-out" and seg.model.bias.reaches_output
    hist = seg.metadata["bias_history"]
    assert hist[0]["bias"] != hist[-1]["bias"]  # δ trained (its own optimizer group)
    assert all(np.isfinite(r["train_loss"]) for r in result.history)


def test_without_a_validation_split_best_is_the_lowest_training_loss(tmp_path):
    items = [(f"t{i}", *synth.generate_tile(seed=i, size=64), 1) for i in range(3)]
    root = write_sampath(tmp_path / "noval", items)
    result = train(tiny_recipe(root, epochs=2), out_dir=tmp_path / "run", device="cpu", plots=False)
    losses = [r["train_loss"] for r in result.history]
    assert result.best_epoch == 1 + int(np.argmin(losses))
    assert np.isnan(result.best_mdice) and result.best_path.is_file()


def test_init_from_a_checkpoint_starts_where_it_ended(small_set, tmp_path):
    # Starting from the bundled demo model: the first epoch is already far better than from scratch.
    cfg = tiny_recipe(small_set, epochs=1, lr=1e-4)
    scratch = train(cfg, out_dir=tmp_path / "scratch", device="cpu", plots=False)
    warm = train(cfg.replace(init="demo"), out_dir=tmp_path / "warm", device="cpu", plots=False)
    assert warm.history[0]["val_mdice"] > scratch.history[0]["val_mdice"] + 0.2
    seg = load_model(warm.last_path)
    assert seg.config.preset == "small"  # the checkpoint's architecture, not [model]
    assert seg.metadata["provenance"]["parent"] == "demo"
    f = class_frequencies(SamPathDataset(small_set, split="train", class_set=BCSS))
    np.testing.assert_allclose(seg.frequencies, f, atol=1e-6)
    # a two-class dataset cannot start from the five-class demo model
    items = [(f"c{i}", rgb, np.minimum(m, 2), f) for i, (rgb, m), f in
             zip(range(3), [synth.generate_tile(seed=i, size=64) for i in range(3)], [1, 0, -1])]
    two = write_sampath(tmp_path / "two", items)
    bad = cfg.replace(init="demo", data={"root": str(two), "class_names": ["a", "b"],
                                         "class_colors": [[0, 0, 0], [1, 1, 1]]})
    with pytest.raises(ConfigError, match="2 classes|5 classes"):
        train(bad, out_dir=tmp_path / "bad", device="cpu", plots=False)


def test_early_stopping_stops(small_set, tmp_path):
    cfg = tiny_recipe(small_set, epochs=30, lr=1e-9, early_stop_patience=2)  # nothing can improve
    result = train(cfg, out_dir=tmp_path / "run", device="cpu", plots=False)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


def test_evaluate_reports_per_class_by_name(small_set, tmp_path):
    result = train(tiny_recipe(small_set, epochs=1), out_dir=tmp_path / "run", device="cpu", plots=False)
    seg = load_model(result.best_path)
    test = SamPathDataset(small_set, split="test", class_set=BCSS)
    report = evaluate(seg, test)
    for name in BCSS.names:
        assert set(report[name]) >= {"dice", "iou", "image_dice", "image_iou"}
    present = [n for n in BCSS.names if report[n]["gt_pixels"] > 0]
    assert report["_mean"]["dice"] == pytest.approx(np.mean([report[n]["dice"] for n in present]))


def test_synthetic_dataset_is_generated_once(tmp_path):
    cfg = TrainConfig().replace(data={"root": str(tmp_path / "syn"), "synth_n_train": 3, "synth_n_val": 1,
                                      "synth_n_test": 1, "synth_tile": 64})
    root = synthetic_root(cfg.data)
    stamp = (root / "img").stat().st_mtime_ns
    assert synthetic_root(cfg.data) == root and (root / "img").stat().st_mtime_ns == stamp
    train_split = SamPathDataset(root, split="train", class_set=BCSS)
    assert len(train_split) == 3 and train_split[0][0].shape == (64, 64, 3)


@pytest.mark.parametrize("recipe", ["synthetic", "bcss", "crag", "bdsa"])
def test_recipes_load(recipe):
    cfg = TrainConfig.from_toml(REPO / "training" / f"{recipe}.toml")
    assert cfg.name == recipe and cfg.epochs >= 1
    from napari_dfa.model import ModelConfig

    ModelConfig.from_dict({**cfg.model, "num_classes": 5})  # the [model] table is valid


def test_bad_recipe_names_file_and_key(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('name = "x"\nepochz = 3\n')
    with pytest.raises(ConfigError, match=r"bad\.toml.*epochz"):
        TrainConfig.from_toml(p)
    p.write_text('[data]\ncrop = 100\n')
    with pytest.raises(ConfigError, match="multiple of 32"):
        TrainConfig.from_toml(p)


def test_bad_data_errors_name_the_file(tmp_path, small_set):
    with pytest.raises(DataError, match="not found"):
        SamPathDataset(tmp_path / "nowhere", split="train", class_set=BCSS)
    # a CSV without img_id/fold
    csv = small_set / "cv.csv"
    good = csv.read_text()
    csv.write_text("name,split\nt0,1\n")
    with pytest.raises(DataError, match=r"cv\.csv.*img_id,fold"):
        SamPathDataset(small_set, split="train", class_set=BCSS)
    csv.write_text(good)
    # a mask with an unknown class id
    from PIL import Image

    bad = np.full((64, 64), 9, np.uint8)
    Image.fromarray(bad).save(small_set / "mask" / "t1.png")
    ds = SamPathDataset(small_set, split="train", class_set=BCSS)
    with pytest.raises(DataError, match=r"t1\.png.*unknown class id.*9"):
        class_frequencies(ds)
    # an image listed in the CSV but missing
    (small_set / "img" / "t0.png").unlink()
    with pytest.raises(DataError, match="t0"):
        SamPathDataset(small_set, split="train", class_set=BCSS)


@pytest.mark.slow
def test_ddp_two_gloo_processes(small_set, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        'name = "ddp"\nepochs = 2\nbatch_size = 2\nlr = 3e-3\nschedule = "constant"\n'
        f'[model]\npreset = "tiny"\n[data]\nkind = "sampath"\nroot = "{small_set}"\nclasses = "bcss"\ncrop = 64\n'
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "napari_dfa.cli", "train", "--config", str(recipe), "--out", str(tmp_path / "run"),
           "--device", "cpu", "--no-plots"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seg = load_model(tmp_path / "run" / "last.safetensors")
    assert seg.metadata["provenance"]["world_size"] == 2
    hist = json.loads((tmp_path / "run" / "history.json").read_text())["epochs"]
    assert [r["epoch"] for r in hist] == [1, 2] and all(r["val_mdice"] is not None for r in hist)
