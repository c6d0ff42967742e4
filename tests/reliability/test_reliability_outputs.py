"""Outputs are never destroyed or mislabelled: incomplete stores are not exported as complete, an
existing file needs --overwrite, a folder that is not our store is never emptied, two writers never
share a store, and every bad predict argument is one clear line before any work."""

from __future__ import annotations

import csv
import json
import socket

import numpy as np
import pytest
import tifffile
import zarr

from napari_dfa import synth
from napari_dfa.cli import main
from napari_dfa.labels import read_labels
from napari_dfa.labels.store import LabelsStore
from napari_dfa.labels.lock import store_lock
from bcss_classes import COLORS, NAMES


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_segmenter):
    root = tmp_path_factory.mktemp("outputs")
    model = tiny_segmenter(class_colors=COLORS).save(root / "tiny.safetensors")
    slide, _ = synth.write_slide(root / "slide.svs", size=(256, 256), seed=1)
    return {"root": root, "model": model, "slide": slide}


def half_written(path, rows_done=384, rows=1024, width=64):
    """A store as a predict run killed at row ``rows_done`` leaves it."""
    store = LabelsStore.create(path, shape=(rows, width), class_names=NAMES, class_colors=COLORS, chunk=128,
                               info={"mpp": 0.5})
    labels = np.ones((rows_done, width), np.uint8) * 2
    store.write_rows(0, labels)
    store.update_info(rows_done=rows_done)
    return path


def complete(path, rows=256, width=64):
    store = LabelsStore.create(path, shape=(rows, width), class_names=NAMES, class_colors=COLORS, chunk=128)
    store.write_rows(0, np.full((rows, width), 3, np.uint8))
    store.finish()
    return path


# --- export ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".geojson", ".tif", ".zarr", ".csv"])
def test_export_of_an_incomplete_store_is_refused(tmp_path, capsys, suffix):
    src = half_written(tmp_path / "cut.labels.zarr")
    assert main(["export", str(src), "--to", str(tmp_path / f"out{suffix}")]) == 1
    err = capsys.readouterr().err
    assert "cut.labels.zarr: incomplete: 384 of 1024 rows segmented (37.5 % of the region)" in err
    assert "--partial" in err and "--resume" in err
    assert not (tmp_path / f"out{suffix}").exists()


def test_partial_export_is_marked_partial_everywhere(tmp_path):
    src = half_written(tmp_path / "cut.labels.zarr")
    outs = {s: tmp_path / f"out{s}" for s in (".geojson", ".tif", ".zarr", ".csv")}
    args = ["export", str(src), "--partial"]
    for out in outs.values():
        args += ["--to", str(out)]
    assert main(args) == 0

    fc = json.loads(outs[".geojson"].read_text())
    assert fc["napari_dfa"]["partial"] is True and fc["napari_dfa"]["rows_done"] == 384
    assert all("PARTIAL: 37.5 %" in f["properties"]["name"] for f in fc["features"])
    desc = json.loads(tifffile.TiffFile(outs[".tif"]).pages[0].description)["napari_dfa"]
    assert desc["partial"] is True and desc["completed"] is False and desc["rows_total"] == 1024
    info = zarr.open_group(str(outs[".zarr"]), mode="r").attrs["napari_dfa"]
    assert info["completed"] is False and info["partial"] is True and info["rows_done"] == 384
    rows = list(csv.DictReader(outs[".csv"].open()))
    assert all(r["partial"].startswith("PARTIAL: 37.5 %") for r in rows)
    # The copies are as incomplete as their source: read back as such, never as complete.
    for out in (outs[".zarr"], outs[".tif"]):
        _, meta = read_labels(out)
        assert meta["completed"] is False and meta["partial"] is True
    assert zarr.open_group(str(outs[".zarr"]), mode="r").attrs["ome"]["multiscales"][0]["name"] == "out.zarr"


def test_a_folder_that_is_not_a_store_is_never_emptied(tmp_path, capsys):
    src = complete(tmp_path / "a.labels.zarr")
    folder = tmp_path / "existing.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        assert main(["export", str(src), "--to", str(folder), *extra]) == 1
        assert "not a napari-dfa labels store" in capsys.readouterr().err
        assert (folder / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("suffix", [".geojson", ".csv", ".tif", ".zarr"])
def test_existing_outputs_need_overwrite(tmp_path, capsys, suffix):
    src = complete(tmp_path / "a.labels.zarr")
    out = tmp_path / f"out{suffix}"
    assert main(["export", str(src), "--to", str(out)]) == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    stamp = out.stat().st_mtime_ns
    assert main(["export", str(src), "--to", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == stamp
    assert main(["export", str(src), "--to", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file left behind
    _ = read_labels(out) if suffix in (".tif", ".zarr") else None


@pytest.mark.parametrize("suffix", [".geojson", ".csv", ".tif", ".zarr"])
def test_a_missing_parent_folder_is_one_clear_error(tmp_path, capsys, suffix):
    src = complete(tmp_path / "a.labels.zarr")
    out = tmp_path / "nowhere" / f"out{suffix}"
    assert main(["export", str(src), "--to", str(out)]) == 1
    err = capsys.readouterr().err
    assert "nowhere does not exist" in err and "Traceback" not in err


def test_export_checks_every_destination_before_writing_any(tmp_path, capsys):
    src = complete(tmp_path / "a.labels.zarr")
    assert main(["export", str(src), "--to", str(tmp_path / "ok.geojson"), "--to", str(tmp_path / "x.png")]) == 1
    assert "unknown export format" in capsys.readouterr().err
    assert not (tmp_path / "ok.geojson").exists()


# --- predict ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag,value", [
    ("--region", "0,0,0,0"), ("--region", "0,0,-10,20"), ("--region", "-5,0,10,10"), ("--region", "1,2,3"),
    ("--chunk", "0"), ("--chunk", "-5"), ("--tile", "0"), ("--overlap", "-1"), ("--batch-size", "0"),
    ("--threads", "0"), ("--workers", "0"), ("--level", "-1"), ("--level", "one"), ("--outputs", "labels,probs"),
    ("--device", "gpu"),
])
def test_bad_predict_arguments_are_refused_up_front(files, tmp_path, capsys, flag, value):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(files["slide"]), "--model", str(files["model"]), "--out", str(out), flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err
    assert not out.exists()


def test_a_misspelled_slide_fails_before_any_output(files, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(files["slide"]), str(tmp_path / "slidee.svs"), "--model", str(files["model"]),
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "no such slide" in err and "slidee.svs" in err and "tile" not in err  # no progress bar
    assert not out.exists()


def test_predict_never_replaces_a_folder_that_is_not_a_store(files, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "slide.labels.zarr").mkdir(parents=True)
    (out / "slide.labels.zarr" / "keep.txt").write_text("mine")
    assert main(["predict", str(files["slide"]), "--model", str(files["model"]), "--out", str(out),
                 "--overwrite"]) == 1
    assert "never replaces it" in capsys.readouterr().err
    assert (out / "slide.labels.zarr" / "keep.txt").read_text() == "mine"


def test_existing_geojson_needs_overwrite(files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "slide.geojson").write_text("{}")
    assert main(["predict", str(files["slide"]), "--model", str(files["model"]), "--out", str(out),
                 "--geojson"]) == 1
    assert "slide.geojson: exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "slide.geojson").read_text() == "{}" and not (out / "slide.labels.zarr").exists()


def test_two_writers_never_share_a_store(files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with store_lock(out / "slide.labels.zarr"):  # another predict is writing it
        assert main(["predict", str(files["slide"]), "--model", str(files["model"]), "--out", str(out),
                     "--device", "cpu", "--tile", "128"]) == 1
    err = capsys.readouterr().err
    assert "another napari-dfa process" in err and "pid" in err
    assert not (out / "slide.labels.zarr").exists()
    # the lock is gone with its holder: the next run goes ahead
    assert main(["predict", str(files["slide"]), "--model", str(files["model"]), "--out", str(out),
                 "--device", "cpu", "--tile", "128"]) == 0
    assert not (out / "slide.labels.zarr.lock").exists()


def test_an_unreachable_scheduler_is_one_line(files, tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["predict", str(files["slide"]), "--model", str(files["model"]), "--out", str(tmp_path / "o"),
                 "--scheduler", f"tcp://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the dask scheduler" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_model_folder_takes_the_runs_best_checkpoint(files, tmp_path, capsys):
    run = tmp_path / "runs" / "syn"
    run.mkdir(parents=True)
    (run / "last.safetensors").write_bytes(files["model"].read_bytes())
    assert main(["predict", str(files["slide"]), "--model", str(run), "--out", str(tmp_path / "o")]) == 1
    assert "last.safetensors" in capsys.readouterr().err  # says which file is meant
    (run / "best.safetensors").write_bytes(files["model"].read_bytes())
    assert main(["predict", str(files["slide"]), "--model", str(run), "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--tile", "128"]) == 0


@pytest.mark.slow
def test_a_dask_run_prints_no_dask_noise(files, tmp_path, capfd):
    assert main(["predict", str(files["slide"]), "--model", str(files["model"]), "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--tile", "128", "--workers", "2", "--threads", "1"]) == 0
    err = capfd.readouterr().err
    assert "Traceback" not in err and "CommClosedError" not in err and "killing" not in err
