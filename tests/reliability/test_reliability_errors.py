"""Tracebacks and late checks (issue 23, cause 7): an OSError while predicting (disk full, read-only,
a name the file system refuses) is one line naming the path; an impossible --out or a slide name
too long for its store's hidden twin is refused before anything runs; class lists (an empty name,
a name twice, more than 255) are refused before the first epoch, from --classes or classes.json."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from napari_dfa import synth
from napari_dfa.cli import main

REPO = Path(__file__).resolve().parents[2]
TOML = str(REPO / "training" / "synthetic.toml")
TINY = ["--set", "model.preset=tiny", "--set", "data.crop=64", "--set", "batch_size=2", "--set", "warmup_steps=0",
        "--epochs", "1", "--device", "cpu", "--no-plots"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_segmenter):
    root = tmp_path_factory.mktemp("errors")
    model = tiny_segmenter().save(root / "tiny.safetensors")
    slide, _ = synth.write_slide(root / "slide.tif", size=(256, 256), seed=1)
    data = synth.write_dataset(root / "data", synth.SynthConfig(), n_train=2, n_val=1, n_test=1, tile=64, seed=0)
    return {"root": root, "model": model, "slide": slide, "data": Path(data)}


@pytest.mark.parametrize("code,words", [
    (errno.ENOSPC, "No space left on device"),
    (errno.EROFS, "Read-only file system"),
    (errno.ENAMETOOLONG, "File name too long"),
    (errno.EACCES, "Permission denied"),
])
def test_an_oserror_while_predicting_is_one_line(files, tmp_path, monkeypatch, capfd, code, words):
    import napari_dfa.inference as inference

    where = tmp_path / "out" / "slide.labels.zarr" / "0" / "c" / "0" / "0"

    def failing(*args, **kwargs):
        raise OSError(code, words, str(where))

    monkeypatch.setattr(inference, "segment", failing)
    assert main(["predict", str(files["slide"]), "--model", str(files["model"]), "--out", str(tmp_path / "out"),
                 "--device", "cpu"]) == 1
    err = capfd.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "napari-dfa predict: error" in line]
    assert len(lines) == 1 and words in lines[0] and str(where) in lines[0], err


def test_an_unexpected_error_while_predicting_names_itself_without_a_traceback(files, tmp_path, monkeypatch, capfd):
    import napari_dfa.inference as inference

    monkeypatch.setattr(inference, "segment", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    assert main(["predict", str(files["slide"]), "--model", str(files["model"]), "--out", str(tmp_path / "o")]) == 1
    err = capfd.readouterr().err
    assert "unexpected RuntimeError: boom" in err and "-v" in err and "Traceback" not in err


def test_impossible_outputs_are_refused_before_anything_runs(files, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    long = tmp_path / ("s" * 240 + ".tif")  # its store's hidden twin passes 255 bytes
    shutil.copyfile(files["slide"], long)
    cases = [
        ([str(files["slide"]), "--out", str(blocker)], "a file, not a folder"),
        ([str(files["slide"]), "--out", str(blocker / "sub")], "is a file, so the folder cannot be created"),
        ([str(long), "--out", str(tmp_path / "o")], "the name is too long"),
    ]
    for args, words in cases:
        assert main(["predict", *args, "--model", str(files["model"])]) == 1
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and "tile" not in err, err  # no progress bar
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("classes,words", [
    ("a,,b,c,d", "an empty class name"),
    ("a,b,c,d,", "an empty class name"),
    ("a,b,A,d,e", "repeated: A, a"),
    (",".join(f"c{i}" for i in range(300)), "300 classes; labels are 8-bit"),
])
def test_bad_class_lists_are_refused_before_training(files, tmp_path, capsys, classes, words):
    out = tmp_path / "run"
    assert main(["train", "--config", TOML, "--data", str(files["data"]), "--classes", classes, "--out", str(out),
                 *TINY]) == 1
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and "damaged" not in err, err
    assert not (out / "last.safetensors").exists() and not (out / "recipe.json").exists()


@pytest.mark.parametrize("names,words", [
    (["tumour", ""], "an empty class name"),
    (["tumour", "Tumour"], "repeated"),
    ([f"c{i}" for i in range(256)], "256 classes"),
    (["x" * 300], "longer than 256 characters"),
])
def test_bad_class_files_are_refused_before_training(files, tmp_path, capsys, names, words):
    data = tmp_path / "data"
    shutil.copytree(files["data"], data)
    for extra in ("synth.json", "classes.json"):
        (data / extra).unlink(missing_ok=True)
    (data / "classes.json").write_text(json.dumps(names))
    out = tmp_path / "run"
    assert main(["train", "--config", TOML, "--data", str(data), "--out", str(out), *TINY]) == 1
    err = capsys.readouterr().err
    assert words in err and "classes.json" in err and "Traceback" not in err, err
    assert not (out / "last.safetensors").exists()
