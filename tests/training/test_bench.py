"""`napari-dfa bench`: the paired method comparison on any SAM-Path folder or the synthetic generator,
its statistics, the mechanism probe and the comparison files (tiny sizes, real training runs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_dfa import synth
from napari_dfa.cli import main
from napari_dfa.errors import ConfigError
from napari_dfa.model import load_model
from napari_dfa.training.comparison import (METHODS, bias_sensitivity, bootstrap_ci, comparison_config,
                                            load_comparison_toml, method_config, read_class_list,
                                            run_comparison, sign_test)
from napari_dfa.training.datasets import write_sampath

REPO = Path(__file__).resolve().parents[2]
NAMES = ["lymphocytes", "carcinoma", "collagen", "adipose", "debris"]
TINY = ["--epochs", "1", "--tile", "64", "--batch-size", "4", "--preset", "tiny", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def folder(tmp_path):
    """A SAM-Path folder with its own class names: 6 train, 2 validation, 2 test tiles."""
    folds = [1, 2, 3, 1, 2, 3, 0, 0, -1, -1]
    items = [(f"t{i}", *synth.generate_tile(seed=300 + i, size=64), f) for i, f in enumerate(folds)]
    root = write_sampath(tmp_path / "my_tiles", items, csv_name="split.csv")
    (root / "classes.json").write_text(json.dumps({"names": NAMES, "colors": [[200, 0, 0]] * 5}))
    return root


def test_bench_on_a_folder_writes_the_table_with_its_class_names_and_paired_stats(folder, tmp_path, capsys):
    out, md = tmp_path / "bench", tmp_path / "report" / "bench.md"
    rc = main(["bench", "--data", str(folder), "--seeds", "2", "--methods", "difficulty,dfa-out", "--out", str(out),
               "--markdown", str(md), *TINY])
    assert rc == 0
    text = md.read_text()
    assert text == (out / "results.md").read_text() == capsys.readouterr().out
    # The folder's own class names head the tables; one row per method (none added as the reference).
    assert "| method | " + " | ".join(NAMES) + " | mDice |" in text
    for row in ("| none (b = 0) |", "| difficulty γ·log(1−Dice) |", "| DFA-out (δ also on the output logits) |"):
        assert row in text
    assert "Paired difference to none" in text and "**Verdict**" in text and "p=" in text
    assert "b_c + 1 / logit + 1" in text and "my_tiles" in text
    # JSON beside the Markdown, the same as results.json.
    results = json.loads(md.with_suffix(".json").read_text())
    assert results == json.loads((out / "results.json").read_text())
    assert results["classes"] == NAMES
    assert sorted(results["runs"]) == sorted(f"{m}/{s}" for m in ("none", "difficulty", "dfa-out") for s in (0, 1))
    for method in ("difficulty", "dfa-out"):
        stats = results["paired"][method]
        assert len(stats["classes"]) == 5
        md_stat = stats["mdice"]
        assert md_stat["n"] == 2 and 0 < md_stat["p"] <= 1 and md_stat["ci"][0] <= md_stat["mean"] <= md_stat["ci"][1]
        # The paired difference really is method − none of the same seed.
        diffs = [results["runs"][f"{method}/{s}"]["mdice"] - results["runs"][f"none/{s}"]["mdice"] for s in (0, 1)]
        assert md_stat["mean"] == pytest.approx(np.mean(diffs))
    # The difficulty run's fixed bias is γ·log(1 − Dice) of the none run of the same seed.
    run = results["runs"]["difficulty/1"]
    expected = 2.0 * np.log1p(-np.clip(run["difficulty_dice"], 1e-6, 1 - 1e-6))
    np.testing.assert_allclose(run["bias"], expected, atol=1e-5)
    # The mechanism probe: per class, for b_c and for the output logit, pixels changed and Dice change.
    sens = results["runs"]["dfa-out/0"]["sensitivity"]
    assert all(len(sens[k]) == 5 for k in ("bias_px", "bias_dice", "logit_px", "logit_dice"))
    assert all(0 <= v <= 1 for v in sens["bias_px"] + sens["logit_px"])
    assert results["runs"]["dfa-out/0"]["bias_start"] is not None and results["runs"]["none/0"]["bias_start"] is None
    # Every run trained on the folder's data under its own run folder.
    assert (out / "dfa-out-seed1" / "best.safetensors").is_file()
    assert load_model(out / "dfa-out-seed1" / "best.safetensors").class_names == NAMES


def test_class_names_from_the_flag_or_a_list_and_clear_errors(folder, tmp_path):
    assert read_class_list(folder, "a,b,c,d,e").names == ("a", "b", "c", "d", "e")
    (folder / "classes.json").write_text(json.dumps(NAMES))
    assert list(read_class_list(folder).names) == NAMES
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ConfigError, match="classes.json"):
        read_class_list(bare)
    (bare / "classes.json").write_text('{"labels": 3}')
    with pytest.raises(ConfigError, match="classes.json"):
        read_class_list(bare)
    # synth.json (the generator's own description) is read too.
    gen = synth.write_dataset(tmp_path / "gen", synth.SynthConfig(), n_train=1, n_val=0, n_test=1, tile=64)
    assert read_class_list(gen).names == synth.SynthConfig().class_names


def test_a_synth_table_sets_the_generator_and_the_class_list(tmp_path, capsys):
    cfg = tmp_path / "harder.toml"
    cfg.write_text("[synth.classes.necrosis]\ndifficulty = 0.3\nfrequency = 0.10\n"
                   "[synth.classes.tumour]\nfrequency = 0.30\n"
                   "[bench]\nseeds = 1\nmethods = [\"none\"]\n")
    out = tmp_path / "bench"
    assert main(["bench", "--config", str(cfg), "--n-train", "4", "--n-val", "2", "--n-test", "2", "--out", str(out),
                 *TINY]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["difficulty"]["necrosis"] == pytest.approx(0.3)
    assert results["methods"] == ["none"] and results["seeds"] == [0]  # from the file's [bench]
    necrosis = results["classes"].index("necrosis")
    assert results["frequencies"][necrosis] > 0.06  # configured 0.10 instead of the default 0.05
    assert "| necrosis |" in capsys.readouterr().out


def test_gpu_recipe_loads_with_its_promised_settings():
    config, bench = load_comparison_toml(REPO / "training" / "gpu_bench.toml")
    assert config.model["preset"] == "small" and config.data.crop == 256 and config.epochs == 30
    assert bench["seeds"] == 10
    assert bench["methods"] == ["none", "dfa", "dfa-out", "difficulty", "logit_adjust"]
    assert config.amp and config.num_workers > 0 and bench["jobs"] >= 1
    assert config.data.synth_tile >= config.data.crop


def test_bad_comparison_files_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[bench]\nseed = 3\n")
    with pytest.raises(ConfigError, match=r"bad.toml.*seed"):
        load_comparison_toml(bad)
    bad.write_text("[synth.classes.necrosis]\ndifficulty = 3.0\n")
    with pytest.raises(ConfigError, match=r"bad.toml.*difficulty"):
        load_comparison_toml(bad)
    bad.write_text("epoch = 3\n")
    with pytest.raises(ConfigError, match=r"bad.toml.*epoch"):
        load_comparison_toml(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")
def test_cuda_without_cuda_fails_loudly_before_training(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--device", "cuda", "--out", str(out)]) == 1
    assert "CUDA is not available" in capsys.readouterr().err
    assert not out.exists()


def test_methods_are_the_recipes_they_claim():
    base = comparison_config()
    assert method_config(base, "dfa-warm-only", 3).model["delta_lr_multiplier"] == 0
    assert method_config(base, "dfa-cold", 3).model["delta_init_scale"] == 0
    la = method_config(base, "logit_adjust", 3)
    assert la.logit_adjust_tau == 1.0 and la.model["bias_mode"] == "none" and la.seed == 3
    assert method_config(base, "dfa-out", 0).model["bias_mode"] == "dfa-out"
    assert method_config(base, "weighted_ce", 0).loss == "weighted_ce"
    with pytest.raises(ConfigError, match="none run"):
        method_config(base, "difficulty", 0)
    # The CLI's copy of the method list (kept so --help needs no torch) agrees.
    from napari_dfa.commands import bench as cmd
    from napari_dfa.training import comparison

    assert cmd.METHOD_NAMES == tuple(METHODS)
    assert cmd.DEFAULT_METHODS == comparison.DEFAULT_METHODS and cmd.DEFAULT_SEEDS == comparison.DEFAULT_SEEDS


def test_sign_test_and_bootstrap_interval():
    assert sign_test([0.1] * 6) == pytest.approx(2 / 64)  # six wins out of six
    assert sign_test([0.1, 0.2, 0.3, -0.1, -0.2, -0.3]) == 1.0
    assert sign_test([0.1, 0.0, 0.0]) == 1.0  # ties are dropped: one win of one
    assert sign_test([0.1] * 9 + [-0.1]) == pytest.approx(2 * 11 / 1024)
    assert sign_test([]) == 1.0
    lo, hi = bootstrap_ci([0.02] * 5)
    assert lo == pytest.approx(0.02) and hi == pytest.approx(0.02)
    d = np.random.default_rng(0).normal(0.05, 0.01, 10)
    lo, hi = bootstrap_ci(d)
    assert lo < d.mean() < hi and lo > 0.03 and hi < 0.07
    assert bootstrap_ci(d) == bootstrap_ci(d)  # seeded: the report is reproducible


def test_bias_sensitivity_measures_label_and_dice_changes_and_restores_the_model():
    seg = load_model("demo")
    tiles = [synth.generate_tile(seed=70 + i, size=64) for i in range(2)]
    images, masks = [t[0] for t in tiles], [t[1] for t in tiles]
    before = seg.class_bias().copy()
    small = bias_sensitivity(seg, images, masks, shift=0.5)
    huge = bias_sensitivity(seg, images, masks, shift=50.0)  # a bias this large takes over every pixel
    np.testing.assert_array_equal(seg.class_bias(), before)
    assert not seg.model.bias._forward_hooks
    assert len(small["bias_px"]) == 5 and all(0 <= v <= 1 for v in small["bias_px"] + small["logit_px"])
    assert max(huge["bias_px"]) > max(small["bias_px"])
    # +50 on a class's output logit labels every pixel with that class: every pixel not already
    # labelled with it changes.
    base = [seg.predict_logits(img[None])["logits"][0].argmax(0).numpy() for img in images]
    n_px = sum(b.size for b in base)
    for c, changed in enumerate(huge["logit_px"]):
        assert changed == pytest.approx(1 - sum(int((b == c).sum()) for b in base) / n_px)
    assert all(v is None or -1 <= v <= 1 for v in small["bias_dice"] + small["logit_dice"])
    assert bias_sensitivity(seg, images, shift=1.0)["bias_dice"] == [None] * 5


@pytest.mark.slow
def test_parallel_runs_give_the_same_results_as_one_at_a_time(tmp_path):
    """jobs=2 trains in two worker processes; a seed still fixes the run."""
    cfg = comparison_config(epochs=1, tile=64, n_train=4, n_val=2, n_test=2, batch_size=4)
    one = run_comparison(methods=["none"], seeds=[0, 1], config=cfg, out_dir=tmp_path / "a", jobs=1)
    two = run_comparison(methods=["none"], seeds=[0, 1], config=cfg, out_dir=tmp_path / "b", jobs=2)
    for key in ("none/0", "none/1"):
        np.testing.assert_allclose(one["runs"][key]["dice"], two["runs"][key]["dice"], atol=1e-6)
    assert one["runs"]["none/0"]["dice"] != one["runs"]["none/1"]["dice"]  # the seed matters
