"""train / evaluate / synth: every bad argument is one line naming it, before any data work;
--resume continues the run's recorded recipe and refuses what contradicts it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from napari_dfa.cli import main
from napari_dfa.commands._args import resolve_model
from napari_dfa.errors import CheckpointError
from napari_dfa.model import read_checkpoint

REPO = Path(__file__).resolve().parents[2]
TOML = str(REPO / "training" / "synthetic.toml")
SMALL = ["--set", "model.preset=tiny", "--set", "data.crop=64", "--set", "data.synth_tile=64",
         "--set", "data.synth_n_train=6", "--set", "data.synth_n_val=2", "--set", "data.synth_n_test=2",
         "--set", "batch_size=4", "--set", "warmup_steps=0", "--device", "cpu", "--no-plots"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("setting,words", [
    ("epochz=1", "--set epochz: unknown key; did you mean 'epochs'?"),
    ("epochs=one", "--set epochs='one': epochs must be int, got str"),
    ("model.presett=tiny", "did you mean 'model.preset'?"),
    ("data.crp=64", "did you mean 'data.crop'?"),
    ("data.synth.clases=1", "did you mean 'data.synth.classes'?"),
    ("augment.flip=1", "augment.flip must be bool"),
    ("data=3", "data is a table"),
    ("lr", "expected KEY=VALUE"),
])
def test_set_keys_and_types_are_checked_before_any_data(tmp_path, capsys, setting, words):
    out = tmp_path / "run"
    assert main(["train", "--config", TOML, "--set", setting, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("args", [["--epochs", "0"], ["--epochs", "one"], ["--batch-size", "-1"], ["--seed", "x"]])
def test_train_flags_are_typed(capsys, args):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", TOML, *args])
    assert exc.value.code == 2 and f"argument {args[0]}" in capsys.readouterr().err


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "syn"
    assert main(["train", "--config", TOML, "--epochs", "1", "--out", str(out), *SMALL]) == 0
    return out


def _stamps(run: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in run.iterdir()}


def test_resume_continues_the_recorded_recipe_not_the_toml(one_epoch_run, caplog):
    """The TOML says 60 epochs and 48 training tiles; the run recorded 1 and 6: resume finishes it
    as recorded (nothing left to train), it does not start 59 more epochs on other data."""
    run = one_epoch_run
    recipe = (run / "recipe.json").read_text()
    last = read_checkpoint(run / "last.safetensors").state_dict
    for args in (["--out", str(run)], ["--config", TOML, "--out", str(run)]):
        assert main(["train", "--resume", *args, "--device", "cpu", "--no-plots"]) == 0
        assert json.loads((run / "history.json").read_text())["epochs"][-1]["epoch"] == 1
        assert (run / "recipe.json").read_text() == recipe
        now = read_checkpoint(run / "last.safetensors").state_dict
        assert all(torch.equal(now[k], last[k]) for k in last)  # no further training
    assert "resuming with the run's recorded recipe" in caplog.text and "epochs" in caplog.text


@pytest.mark.parametrize("change,words", [
    (["--epochs", "3"], "epochs=3 (the run has 1)"),
    (["--set", "data.synth_n_train=8"], "data.synth_n_train=8 (the run has 6)"),
    (["--seed", "5"], "seed=5 (the run has 0)"),
])
def test_resume_refuses_options_that_contradict_the_run(one_epoch_run, capsys, change, words):
    before = _stamps(one_epoch_run)
    assert main(["train", "--resume", "--out", str(one_epoch_run), *change, "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert words in err and "recipe.json" in err
    assert _stamps(one_epoch_run) == before  # nothing rewritten


def test_a_run_folder_is_not_overwritten_without_asking(one_epoch_run, capsys):
    before = _stamps(one_epoch_run)
    assert main(["train", "--config", TOML, "--out", str(one_epoch_run), *SMALL]) == 1
    assert "holds a training run" in capsys.readouterr().err
    assert _stamps(one_epoch_run) == before


def test_evaluate_says_a_slide_is_not_a_dataset(tmp_path, capsys):
    slide = tmp_path / "some.svs"
    slide.write_bytes(b"II*\x00")
    assert main(["evaluate", "--model", "demo", "--data", str(slide)]) == 1
    err = capsys.readouterr().err
    assert "a slide, not a dataset folder" in err and "napari-dfa predict" in err
    assert main(["evaluate", "--model", "demo", "--data", str(tmp_path / "missing")]) == 1
    assert "dataset folder not found" in capsys.readouterr().err


def test_a_run_folder_as_model_means_its_best_checkpoint(one_epoch_run, tmp_path, capsys):
    assert resolve_model(str(one_epoch_run)) == str(one_epoch_run / "best.safetensors")
    empty = tmp_path / "syn"
    empty.mkdir()
    (empty / "last.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"last\.safetensors"):
        resolve_model(str(empty))
    assert main(["evaluate", "--model", str(empty), "--data", str(tmp_path)]) == 1
    assert "give one of the checkpoints in it" in capsys.readouterr().err


def test_synth_checks_its_output_first(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["synth", "dataset", str(tmp_path / "d"), "--train", "-1"])
    assert "argument --train" in capsys.readouterr().err
    slide = tmp_path / "s.tif"
    slide.write_bytes(b"mine")
    assert main(["synth", "slide", str(slide), "--size", "64"]) == 1
    assert "--overwrite" in capsys.readouterr().err and slide.read_bytes() == b"mine"
    assert main(["synth", "slide", str(tmp_path / "no" / "s.tif"), "--size", "64"]) == 1
    assert "does not exist" in capsys.readouterr().err
