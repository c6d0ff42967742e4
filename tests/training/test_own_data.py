"""Train and evaluate on a user's own SAM-Path folder: the class names are the folder's, never a
recipe's or another dataset's, and any disagreement stops before training with both lists named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_dfa import synth
from napari_dfa.cli import main
from napari_dfa.classes import BCSS
from napari_dfa.errors import ConfigError, DataError
from napari_dfa.model import load_model
from napari_dfa.training import TrainConfig
from napari_dfa.training import comparison, datasets
from napari_dfa.training.datasets import folder_config, write_sampath

REPO = Path(__file__).resolve().parents[2]
CUSTOM = str(REPO / "training" / "custom.toml")
NAMES = ["gland", "lumen", "fibrosis"]  # labels 1..3; no BCSS class has these names
TINY = ["--epochs", "1", "--set", "model.preset=tiny", "--set", "data.crop=64", "--set", "batch_size=4",
        "--set", "warmup_steps=0", "--device", "cpu", "--no-plots"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _folder(root: Path, *, names=NAMES, top: int = 3) -> Path:
    """Synthetic tissue relabelled to ``top`` classes (0 stays ignore), with a classes.json."""
    items = []
    for i, fold in enumerate([1, 1, 1, 2, 0, -1]):
        rgb, mask = synth.generate_tile(seed=300 + i, size=64)
        mask = np.where(mask > 0, np.minimum(mask, top), 0).astype(np.uint8)
        items.append((f"tile{i}", rgb, mask, fold))
    write_sampath(root, items, csv_name="split.csv")
    if names is not None:
        (root / "classes.json").write_text(json.dumps(names))
    return root


def test_train_and_evaluate_carry_the_folders_class_names(tmp_path, capsys):
    data = _folder(tmp_path / "mine")
    out = tmp_path / "run"
    assert main(["train", "--config", CUSTOM, "--data", str(data), "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "| fibrosis |" in printed and "inflammatory" not in printed
    seg = load_model(out / "best.safetensors")
    assert seg.class_names == NAMES and seg.num_classes == 3
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["data"]["class_names"] == NAMES and recipe["data"]["root"] == str(data.resolve())

    report_path = tmp_path / "eval.json"
    assert main(["evaluate", "--model", str(out), "--data", str(data), "--json", str(report_path),
                 "--device", "cpu"]) == 0
    assert "| lumen |" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert [k for k in report if not k.startswith("_")] == NAMES


def test_the_synthetic_recipe_on_a_folder_takes_the_folders_names(tmp_path):
    # The issue: synthetic.toml --data FOLDER trained under the synthetic names ("inflammatory" ...).
    data = _folder(tmp_path / "mine")
    out = tmp_path / "run"
    assert main(["train", "--config", str(REPO / "training" / "synthetic.toml"), "--data", str(data),
                 "--out", str(out), *TINY]) == 0
    assert load_model(out / "best.safetensors").class_names == NAMES


def test_classes_flag_and_colours_from_classes_json(tmp_path):
    data = _folder(tmp_path / "mine", names={"names": NAMES, "colors": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]})
    config = folder_config(TrainConfig.from_toml(CUSTOM), data)
    assert config.data.class_names == tuple(NAMES) and config.data.class_colors[2] == (7, 8, 9)
    flagged = folder_config(TrainConfig.from_toml(CUSTOM), data, classes="a, b ,c")
    assert flagged.data.class_names == ("a", "b", "c") and flagged.data.kind == "sampath"
    # bench and train read a folder's names with the very same function
    assert comparison.read_class_list is datasets.read_class_list
    assert comparison.folder_config is datasets.folder_config


def test_a_recipe_naming_other_classes_is_an_error_naming_both(tmp_path, capsys):
    data = _folder(tmp_path / "mine")
    rc = main(["train", "--config", str(REPO / "training" / "bcss.toml"), "--data", str(data),
               "--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "classes.json" in err and "gland" in err  # the folder's list
    assert "bcss.toml" in err and "inflammatory" in err  # the recipe's list
    assert not (tmp_path / "run").exists()  # stopped before any training


def test_masks_with_more_labels_than_classes_are_an_error(tmp_path, capsys):
    data = _folder(tmp_path / "mine", names=["gland", "lumen"], top=3)  # label 3 has no name
    rc = main(["train", "--config", CUSTOM, "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "label 3" in err and "classes.json" in err and "gland, lumen" in err
    with pytest.raises(DataError, match=r"label 3.*--classes"):
        folder_config(TrainConfig.from_toml(CUSTOM), data, classes="x,y")


def test_no_class_names_says_what_to_add_unless_the_recipe_names_fitting_ones(tmp_path, capsys):
    data = _folder(tmp_path / "bare", names=None)
    rc = main(["train", "--config", CUSTOM, "--data", str(data), "--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "classes.json" in err and "--classes" in err
    with pytest.raises(ConfigError, match="classes.json"):  # the synthetic recipe names none for a folder
        folder_config(TrainConfig.from_toml(REPO / "training" / "synthetic.toml"), data)
    # A recipe for this dataset names classes whose ids cover the masks: they are used.
    config = folder_config(TrainConfig.from_toml(REPO / "training" / "bcss.toml"), data)
    assert config.data.class_names == BCSS.names and config.data.class_colors == BCSS.colors
    # ... and a recipe naming fewer classes than the masks hold is refused, naming both.
    crag = TrainConfig.from_toml(REPO / "training" / "crag.toml")
    with pytest.raises(DataError, match=r"label 4 \(after label_shift = 1\).*crag.toml.*background, gland"):
        folder_config(crag, data)


def test_evaluate_refuses_a_folder_with_other_names_than_the_model(tmp_path, capsys):
    data = _folder(tmp_path / "mine", names=["gland", "lumen", "fibrosis", "fat", "mucin"])
    rc = main(["evaluate", "--model", "demo", "--data", str(data), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1 and "classes.json" in err and "mucin" in err and "the model demo" in err and "tumour" in err
    # --classes overrides the folder's file; the demo's own names are accepted
    demo = ",".join(load_model("demo").class_names)
    assert main(["evaluate", "--model", "demo", "--data", str(data), "--classes", demo, "--device", "cpu"]) == 0
