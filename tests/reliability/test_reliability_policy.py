"""One output policy for every command that writes (issue 23, cause 1): an output is never an input
of the same command, however it is spelled; an existing output needs --overwrite; a file's folder
must exist (nothing is created on the way); the checks come before any model is loaded; `~` is
expanded everywhere; two writers of one output never both say "wrote"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_dfa import synth
from napari_dfa.cli import main
from napari_dfa.errors import DataError
from napari_dfa.labels import write_geojson
from napari_dfa.files.outputs import OutputError, atomic_output, check_output, claim, leftovers
from bcss_classes import NAMES


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_segmenter):
    root = tmp_path_factory.mktemp("policy")
    model = tiny_segmenter().save(root / "parent.safetensors")
    slide, _ = synth.write_slide(root / "slide.tif", size=(256, 256), seed=1)
    painted = np.zeros((256, 256), np.uint8)
    painted[40:120, 40:120] = 2
    painted[150:220, 150:220] = 3
    corr = write_geojson(root / "corr.geojson", painted, NAMES)
    return {"root": root, "model": model, "slide": slide, "corr": corr}


def _bytes(paths):
    return {p: p.read_bytes() for p in paths}


# --- the policy itself: every spelling of an input is the input ---------------------------------------
def _spellings(path, tmp_path, monkeypatch):
    """The same file named six ways: as given, relative, with '..', through a symlink, a hard link,
    and with '~'."""
    link = tmp_path / "link.bin"
    link.symlink_to(path)
    hard = tmp_path / "hard.bin"
    os.link(path, hard)
    monkeypatch.setenv("HOME", str(path.parent))
    monkeypatch.chdir(path.parent)
    return [path, path.name, path.parent / ".." / path.parent.name / path.name, link, hard, f"~/{path.name}"]


def test_an_input_is_never_an_output_however_it_is_spelled(tmp_path, monkeypatch):
    src = tmp_path / "data" / "in.bin"
    src.parent.mkdir()
    src.write_bytes(b"mine")
    for spelling in _spellings(src, tmp_path, monkeypatch):
        for overwrite in (False, True):
            with pytest.raises(OutputError, match="this command reads"):
                check_output(spelling, inputs=[("the input", src)], overwrite=overwrite)
    # a file output inside a folder input (a store) is refused too
    folder = tmp_path / "in.labels.zarr"
    folder.mkdir()
    with pytest.raises(OutputError, match="inside the store"):
        check_output(folder / "x.geojson", inputs=[("the store", folder)])
    assert src.read_bytes() == b"mine"


@settings(max_examples=40, deadline=None)
@given(name=st.text(st.characters(min_codepoint=48, max_codepoint=0x2FF, blacklist_characters="/\\\x00"),
                    min_size=1, max_size=40).filter(lambda s: s not in (".", "..")),
       exists=st.booleans(), overwrite=st.booleans())
def test_check_output_rules_hold_for_any_name(tmp_path_factory, name, exists, overwrite):
    folder = tmp_path_factory.mktemp("any")
    dst = folder / name
    if exists:
        dst.write_bytes(b"old")
    if exists and not overwrite:
        with pytest.raises(OutputError, match="exists; pass --overwrite"):
            check_output(dst, overwrite=overwrite)
    else:
        assert check_output(dst, overwrite=overwrite) == dst
    with pytest.raises(OutputError, match="does not exist"):
        check_output(folder / "missing" / name)
    assert not (folder / "missing").exists()


def test_names_too_long_for_their_temporary_twin_are_refused_up_front(tmp_path):
    for n in (242, 250, 255):
        with pytest.raises(OutputError, match="too long"):
            check_output(tmp_path / ("s" * n + ".tif"))
    check_output(tmp_path / ("s" * 200 + ".tif"))


# --- finetune: the report and the model never replace an input --------------------------------------
@pytest.mark.parametrize("target", ["corr", "slide", "model"])
@pytest.mark.parametrize("extra", [[], ["--overwrite"], ["--overwrite", "--force"]])
def test_finetune_json_never_replaces_an_input(files, capsys, target, extra):
    before = _bytes([files["corr"], files["slide"], files["model"]])
    assert main(["finetune", str(files["slide"]), "--model", str(files["model"]), "--corrections",
                 str(files["corr"]), "--dry-run", "--json", str(files[target]), *extra]) == 1
    err = capsys.readouterr().err
    assert "this command reads" in err and "Traceback" not in err
    assert _bytes(before) == before


def test_finetune_out_never_replaces_the_parent_or_a_runs_checkpoint(files, tmp_path, capsys):
    before = _bytes([files["model"]])
    base = ["finetune", str(files["slide"]), "--corrections", str(files["corr"]), "--force"]
    for extra in ([], ["--overwrite"]):
        assert main([*base, "--model", str(files["model"]), "--out", str(files["model"]), *extra]) == 1
        assert "this command reads" in capsys.readouterr().err
    assert _bytes(before) == before
    run = tmp_path / "run1"
    run.mkdir()
    (run / "recipe.json").write_text("{}")
    for name in ("best.safetensors", "last.safetensors"):
        (run / name).write_bytes(files["model"].read_bytes())
    # the run's best as the model: its last is an input too; any run checkpoint is never an output
    for model, out in ((run, run / "last.safetensors"), (files["model"], run / "best.safetensors"),
                       ("demo", run / "last.safetensors")):
        assert main([*base, "--model", str(model), "--out", str(out), "--overwrite"]) == 1
        err = capsys.readouterr().err
        assert ("training run" in err or "this command reads" in err) and "Traceback" not in err
    assert (run / "best.safetensors").read_bytes() == files["model"].read_bytes()


def test_finetune_checks_its_outputs_before_loading_anything(files, tmp_path, capsys):
    """A model that does not exist: if the output were checked late, the error would be the model's."""
    existing = tmp_path / "new.safetensors"
    existing.write_bytes(b"old")
    base = ["finetune", str(files["slide"]), "--model", str(tmp_path / "nope.safetensors"),
            "--corrections", str(files["corr"])]
    cases = [
        (["--out", str(existing)], "exists; pass --overwrite"),
        (["--out", str(tmp_path / "a folder") + "/"], "a folder; give the new model's file name"),
        (["--out", str(tmp_path / "missing" / "new.safetensors")], "does not exist"),
        (["--out", str(tmp_path / "new.pt")], "give a .safetensors file"),
        (["--out", str(tmp_path / "n.safetensors"), "--json", str(tmp_path / "n.safetensors")], "written twice"),
    ]
    (tmp_path / "dir.safetensors").mkdir()
    cases.append((["--out", str(tmp_path / "dir.safetensors"), "--overwrite"], "a folder is in the way"))
    for extra, words in cases:
        assert main([*base, *extra]) == 1
        err = capsys.readouterr().err
        assert words in err and "nope.safetensors" not in err, err
    assert existing.read_bytes() == b"old" and not (tmp_path / "missing").exists()


def test_a_second_finetune_on_the_same_output_stops_at_once(files, tmp_path, capsys):
    out = tmp_path / "new.safetensors"
    with claim(out):  # another finetune holds it
        assert main(["finetune", str(files["slide"]), "--model", str(files["model"]), "--corrections",
                     str(files["corr"]), "--out", str(out), "--force"]) == 1
    err = capsys.readouterr().err
    assert "another napari-dfa process is writing it" in err and "pid" in err
    assert not out.exists()


def test_two_concurrent_finetunes_never_both_write(files, tmp_path):
    out = tmp_path / "new.safetensors"
    args = ["finetune", str(files["slide"]), "--model", str(files["model"]), "--corrections", str(files["corr"]),
            "--out", str(out), "--force", "--method", "head", "--steps", "5", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "napari_dfa.cli", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=900), p.stdout.read(), p.stderr.read()) for p in procs]
    wrote = [r for r in results if f"wrote {out}" in r[1]]
    assert len(wrote) == 1, results
    (other,) = [r for r in results if r not in wrote]
    assert other[0] == 1 and ("another napari-dfa process" in other[2] or "exists; pass --overwrite" in other[2])
    assert not leftovers(out) and not (tmp_path / "new.safetensors.lock").exists()


def test_atomic_output_without_overwrite_never_replaces_what_appeared(tmp_path):
    dst = tmp_path / "r.json"
    with pytest.raises(OutputError, match="appeared while"):
        with atomic_output(dst, overwrite=False) as tmp:
            tmp.write_text("mine")
            dst.write_text("theirs")  # another writer finished first
    assert dst.read_text() == "theirs" and not leftovers(dst)


# --- the other commands --------------------------------------------------------------------------------
def test_export_model_checks_where_it_writes_before_tracing(tmp_path, capsys):
    missing = tmp_path / "sub" / "pkg.zip"
    assert main(["export-model", "--model", str(tmp_path / "nope.safetensors"), "--bioimageio", str(missing)]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "nope" not in err
    assert not (tmp_path / "sub").exists()  # no folder created on the way
    existing = tmp_path / "pkg.zip"
    existing.write_bytes(b"old")
    assert main(["export-model", "--model", str(tmp_path / "nope.safetensors"), "--bioimageio", str(existing)]) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err and existing.read_bytes() == b"old"


def test_evaluate_creates_no_folder_for_its_report(files, tmp_path, capsys):
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    assert main(["evaluate", "--model", str(files["model"]), "--data", str(data),
                 "--json", str(tmp_path / "no" / "r.json")]) == 1
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "no").exists()
    assert main(["evaluate", "--model", str(files["model"]), "--data", str(data), "--json", str(files["model"]),
                 "--overwrite"]) == 1
    assert "this command reads" in capsys.readouterr().err


def test_export_never_writes_into_its_own_store(tmp_path, capsys):
    from napari_dfa.labels.store import LabelsStore

    src = tmp_path / "a.labels.zarr"
    store = LabelsStore.create(src, shape=(64, 64), class_names=NAMES, class_colors=[(1, 2, 3)] * 5, chunk=64)
    store.write_rows(0, np.ones((64, 64), np.uint8))
    store.finish()
    for to in (src / "x.geojson", src / "0" / "x.csv"):
        assert main(["export", str(src), "--to", str(to)]) == 1
        assert "inside the input" in capsys.readouterr().err and not to.exists()


def test_tilde_is_expanded_in_every_path_argument(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", str(files["slide"]), "--model", str(files["model"]), "--corrections",
                 str(files["corr"]), "--dry-run", "--json", "~/report.json"]) == 0
    assert (tmp_path / "report.json").is_file() and not (tmp_path / "~").exists()
    assert main(["predict", str(files["slide"]), "--model", str(files["model"]), "--out", "~/pred",
                 "--device", "cpu", "--tile", "128", "--geojson"]) == 0
    assert (tmp_path / "pred" / "slide.labels.zarr").is_dir() and not (tmp_path / "~").exists()
    assert main(["export", "~/pred/slide.labels.zarr", "--to", "~/slide.csv"]) == 0
    assert (tmp_path / "slide.csv").is_file()
    assert main(["synth", "slide", "~/s.tif", "--size", "64", "--no-progress"]) == 0
    assert (tmp_path / "s.tif").is_file() and not (tmp_path / "~").exists()


def test_synth_refuses_to_replace_its_truth_and_writes_whole_files(tmp_path, capsys):
    truth = tmp_path / "s_truth.tif"
    truth.write_bytes(b"mine")
    assert main(["synth", "slide", str(tmp_path / "s.tif"), "--size", "64", "--no-progress"]) == 1
    assert "s_truth.tif: exists; pass --overwrite" in capsys.readouterr().err and truth.read_bytes() == b"mine"
    assert main(["synth", "slide", str(tmp_path / "s.tif"), "--size", "64", "--no-progress", "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif", "s_truth.tif"]  # nothing hidden left


def test_a_killed_write_leaves_the_old_output_and_the_next_run_clears_its_leftovers(tmp_path):
    """A child killed -9 inside atomic_output, at three moments: the old file stays whole, the hidden
    twin is found and removed by the next writer of that output."""
    dst = tmp_path / "report.json"
    for moment in ("opened", "half", "written"):
        dst.write_text('{"old": true}')
        code = textwrap.dedent(f"""
            import os, signal
            from napari_dfa.files.outputs import atomic_output
            with atomic_output({str(dst)!r}) as tmp:
                with open(tmp, "w") as fh:
                    if {moment!r} != "opened":
                        fh.write('{{"new": ')
                        fh.flush()
                    if {moment!r} == "written":
                        fh.write('true}}')
                        fh.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
        """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert proc.returncode == -9, proc.stderr
        assert json.loads(dst.read_text()) == {"old": True}
        assert len(leftovers(dst)) == 1
        with atomic_output(dst) as tmp:
            tmp.write_text('{"new": true}')
        assert json.loads(dst.read_text()) == {"new": True} and not leftovers(dst)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_errors_of_the_policy_are_data_errors():
    assert issubclass(OutputError, DataError)
