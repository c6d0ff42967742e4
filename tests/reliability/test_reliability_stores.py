"""Stores that know their slide (issue 23, causes 2 and 6): two inputs of one name never share a
store, --resume never continues another slide's store (content keys, not paths), --overwrite
builds the new store beside the old and swaps it in at the end, so a run killed at any moment
leaves the old results whole and nothing stale beside the new ones; what a killed run left
(hidden twins, a store moved aside) is found and cleared by the next one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zarr

from napari_dfa import synth
from napari_dfa.cli import main
from napari_dfa.inference import Runtime, Tiling, segment
from napari_dfa.labels.store import LabelsStore
from napari_dfa.labels.lock import store_lock
from napari_dfa.files.outputs import claim, leftovers
from napari_dfa.slide import open_slide
from bcss_classes import COLORS

RUN = ["--tile", "128", "--overlap", "32", "--chunk", "64", "--device", "cpu", "--batch-size", "1", "--threads", "1"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_segmenter):
    """Slides a/s.tif and b/s.tif (same name, other pixels), c/s.tif (a copy of a), a tiny model,
    and the complete outputs of each slide (store, GeoJSON, areas) for comparison."""
    root = tmp_path_factory.mktemp("stores")
    model = tiny_segmenter(class_colors=COLORS).save(root / "tiny.safetensors")
    slides = {}
    for name, seed in (("a", 1), ("b", 2)):
        (root / name).mkdir()
        slides[name], _ = synth.write_slide(root / name / "s.tif", size=(384, 384), seed=seed)
    (root / "c").mkdir()
    slides["c"] = Path_copy(slides["a"], root / "c" / "s.tif")
    done = {}
    for name in ("a", "b"):
        out = root / f"done_{name}"
        assert main(["predict", str(slides[name]), "--model", str(model), "--out", str(out), "--geojson",
                     "--areas", *RUN]) == 0
        done[name] = snapshot(out)
    return {"root": root, "model": model, **slides, "done": done}


def Path_copy(src, dst):  # noqa: N802 - reads as a noun
    shutil.copyfile(src, dst)
    return dst


def snapshot(out) -> dict:
    """What a reader of OUT sees: the labels, the store's slide key and the two derived files."""
    store = out / "s.labels.zarr"
    snap = {"labels": None, "key": None, "geojson": None, "areas": None}
    if store.exists():
        group = zarr.open_group(str(store), mode="r")
        snap["labels"] = np.asarray(group["0"][:])
        snap["key"] = group.attrs["napari_dfa"].get("content_key")
        snap["completed"] = group.attrs["napari_dfa"].get("completed")
    if (out / "s.geojson").exists():  # feature ids are fresh UUIDs: the geometries and classes count
        fc = json.loads((out / "s.geojson").read_text())
        snap["geojson"] = json.dumps([{k: v for k, v in f.items() if k != "id"} for f in fc["features"]])
    if (out / "s.areas.csv").exists():
        snap["areas"] = (out / "s.areas.csv").read_text()
    return snap


def hidden(out) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".lock"))


# --- two inputs of one name -----------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [[], ["--overwrite"], ["--resume"]])
def test_two_slides_of_one_name_are_refused_before_anything_runs(files, tmp_path, capsys, flags):
    other = tmp_path / "x"
    other.mkdir()
    svs = Path_copy(files["b"], other / "s.svs")  # another suffix, the same stem
    ome = Path_copy(files["b"], other / "s.ome.tif")  # .ome.tif: the stem drops both suffixes
    for pair, words in (((files["a"], files["b"]), "would both write"), ((files["a"], svs), "would both write"),
                        ((files["a"], ome), "would both write"), ((files["a"], files["a"]), "is given twice")):
        out = tmp_path / "out"
        assert main(["predict", *map(str, pair), "--model", str(files["model"]), "--out", str(out), *flags]) == 1
        err = capsys.readouterr().err
        assert words in err and "nothing was run" in err and "Traceback" not in err
        assert not out.exists()


# --- resume knows its slide ------------------------------------------------------------------------------
def _half_store(files, out):
    """A store of slide a as a run stopped after its first rows leaves it."""
    batches = iter(range(1000))
    res = segment(open_slide(files["a"]), files["model"], level=0, out=out / "s.labels.zarr",
                  tiling=Tiling(tile=128, overlap=32, chunk=64), runtime=Runtime(device="cpu", batch_size=1),
                  cancel=lambda: next(batches) >= 12)
    assert not res.completed and 0 < LabelsStore.open(out / "s.labels.zarr").rows_done < 384
    return out / "s.labels.zarr"


def test_resume_refuses_a_store_made_from_another_slide(files, tmp_path, capsys):
    out = tmp_path / "out"
    store = _half_store(files, out)
    before = snapshot(out)
    assert main(["predict", str(files["b"]), "--model", str(files["model"]), "--out", str(out), "--resume",
                 *RUN]) == 1
    err = capsys.readouterr().err
    assert "made from another slide" in err and "--overwrite" in err and "Traceback" not in err
    assert str(store.name) in err  # the message names the store it refused
    after = snapshot(out)
    np.testing.assert_array_equal(after["labels"], before["labels"])
    assert LabelsStore.open(store).rows_done == LabelsStore.open(store).rows_done and not after["completed"]
    # the same pixels under another path are the same slide: it resumes, and equals a whole run
    assert main(["predict", str(files["c"]), "--model", str(files["model"]), "--out", str(out), "--resume",
                 "--geojson", *RUN]) == 0
    np.testing.assert_array_equal(snapshot(out)["labels"], files["done"]["a"]["labels"])
    assert snapshot(out)["geojson"] == files["done"]["a"]["geojson"]



def test_segment_itself_refuses_to_resume_another_slides_store_naming_both(files, tmp_path):
    """segment(out=..., resume=True), which the Segment widget and scripts call without predict's
    check in front of it, refuses a store another slide began: it names the store and the slide,
    and the store is left as it was."""
    from napari_dfa.errors import ConfigError

    out = tmp_path / "out"
    store = _half_store(files, out)
    before = snapshot(out)
    with pytest.raises(ConfigError) as err:
        segment(open_slide(files["b"]), files["model"], level=0, out=store, resume=True,
                tiling=Tiling(tile=128, overlap=32, chunk=64), runtime=Runtime(device="cpu", batch_size=1))
    text = str(err.value)
    assert text.startswith(f"{store}: cannot resume, the store was made from another slide ({files['a']}"), text
    assert f"; {files['b']} has " in text, text
    np.testing.assert_array_equal(snapshot(out)["labels"], before["labels"])
    assert snapshot(out)["key"] == before["key"]



def _resume(files, store, slide="a"):
    return segment(open_slide(files[slide]), files["model"], level=0, out=store, resume=True,
                   tiling=Tiling(tile=128, overlap=32, chunk=64), runtime=Runtime(device="cpu", batch_size=1))


def test_resume_refuses_rows_computed_another_way_and_takes_an_older_store_as_labels_only(files, tmp_path):
    """A store begun with probabilities, in bf16 or with the stain matched (as those runs record it)
    is never continued by a plain float32 run of labels, which records none of them; a store from
    before the outputs were recorded holds labels only, and resumes as such."""
    from napari_dfa.errors import ConfigError

    half = _half_store(files, tmp_path / "half")

    def variant(name, **info):
        store = tmp_path / name / "s.labels.zarr"
        shutil.copytree(half, store)
        LabelsStore.open(store).update_info(**info)
        return store

    for store in (variant("probs", extras=["probabilities"]), variant("bf16", precision="bfloat16"),
                  variant("stain", stain={"method": "reinhard", "target": [0.5, 0.1, 0.2]})):
        with pytest.raises(ConfigError, match="cannot resume, the store was written with other settings"):
            _resume(files, store)
    old = tmp_path / "old" / "s.labels.zarr"
    shutil.copytree(half, old)
    group = zarr.open_group(str(old), mode="r+")
    group.attrs["napari_dfa"] = {k: v for k, v in group.attrs["napari_dfa"].items() if k != "extras"}
    assert _resume(files, old).completed
    np.testing.assert_array_equal(snapshot(old.parent)["labels"], files["done"]["a"]["labels"])



def test_a_store_records_where_its_labels_lie_and_what_made_them(files, tmp_path):
    """What resume compares and what a viewer places the labels by: a region of level 1 (downsample
    2) lies at twice its offset in level-0 pixels; the slide's name, content key, mpp and pyramid,
    the run's level, region and outputs and the caller's own notes are recorded."""
    from napari_dfa.slide.content import key_of_slide

    path, _ = synth.write_slide(tmp_path / "p.tif", size=(384, 384), seed=3, tile=64)
    slide = open_slide(path)
    assert list(slide.downsamples) == [1.0, 2.0, 4.0] and slide.mpp == 0.5
    store = tmp_path / "out" / "p.labels.zarr"
    segment(slide, files["model"], level=1, region=(32, 48, 64, 96), out=store, outputs=("labels", "uncertainty"),
            store_info={"note": "by hand"}, tiling=Tiling(tile=128, overlap=32, chunk=64),
            runtime=Runtime(device="cpu", batch_size=1))
    s = LabelsStore.open(store)
    info = s.info
    assert s.labels.shape == (64, 96) and s.labels.chunks == (64, 64) and s.extra("uncertainty").shape == (64, 96)
    assert info["translate"] == [64.0, 96.0] and info["downsample"] == 2.0
    assert info["level"] == 1 and info["region"] == [32, 48, 64, 96] and info["extras"] == ["uncertainty"]
    assert info["source"] == str(path) and info["content_key"] == key_of_slide(slide)
    assert info["mpp"] == 0.5 and info["image_downsamples"] == [1.0, 2.0, 4.0] and info["note"] == "by hand"
    assert info["completed"] and info["rows_done"] == 64


def test_an_existing_store_says_what_it_holds(files, tmp_path, capsys):
    out = tmp_path / "out"
    _half_store(files, out)
    assert main(["predict", str(files["b"]), "--model", str(files["model"]), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "labels of s.tif, incomplete" in err and "the same slide only" in err


# --- --overwrite swaps at the end ------------------------------------------------------------------------
_KILL_IN_SWAP = textwrap.dedent("""
    import os, signal, sys
    import napari_dfa.commands.predict as P
    real_swap, real_replace = P._swap_in, os.replace
    K = int(sys.argv[1])

    def swap(*a, **k):  # killed -9 at the K-th rename of the swap (0: as it starts)
        n = [0]
        def replace(src, dst):
            if not str(src).endswith(".partial"):  # zarr's own chunk writes are not counted
                n[0] += 1
                if n[0] == K:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)
        if K == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
        return real_swap(*a, **k)

    P._swap_in = swap
    from napari_dfa.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def _check_consistent(out, files):
    """The invariant after any kill: a whole store of a or of b, never a's files beside b's labels."""
    snap = snapshot(out)
    a, b = files["done"]["a"], files["done"]["b"]
    assert snap["completed"], "the store in place is always a complete one"
    own = a if snap["key"] == a["key"] else b
    assert snap["key"] in (a["key"], b["key"])
    np.testing.assert_array_equal(snap["labels"], own["labels"])
    for key in ("geojson", "areas"):
        assert snap[key] in (None, own[key]), f"{key} of the other slide beside the store"
    return own is b


@pytest.mark.parametrize("kill_at", [0, 1, 2, 3, 4])
def test_overwrite_killed_at_any_point_of_the_swap_leaves_one_slides_results(files, tmp_path, kill_at):
    out = tmp_path / "out"
    shutil.copytree(files["root"] / "done_a", out)
    args = ["predict", str(files["b"]), "--model", str(files["model"]), "--out", str(out), "--overwrite",
            "--geojson", "--areas", *RUN]
    proc = subprocess.run([sys.executable, "-c", _KILL_IN_SWAP, str(kill_at), *args], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with store_lock(out / "s.labels.zarr"), claim(out / "s.geojson"), claim(out / "s.areas.csv"):
        pass  # the next writer's claims: leftovers cleared, a store moved aside put back
    assert hidden(out) == []
    is_b = _check_consistent(out, files)
    # renames: 1 the old store aside, 2 the new one in place, 3 its GeoJSON, 4 its areas; a kill
    # before 2 completes leaves the old store (put back), from 3 on the new one
    assert is_b == (kill_at >= 3)
    # the next run finishes the job: --resume on b's complete store writes its missing files;
    # on a's store it is refused (another slide) and --overwrite replaces it
    again = ["predict", str(files["b"]), "--model", str(files["model"]), "--out", str(out), "--geojson", "--areas",
             *RUN]
    assert main([*again, "--resume" if is_b else "--overwrite"]) == 0
    snap = snapshot(out)
    assert snap["key"] == files["done"]["b"]["key"] and snap["geojson"] == files["done"]["b"]["geojson"]
    assert snap["areas"] == files["done"]["b"]["areas"] and hidden(out) == []


def test_overwrite_killed_while_segmenting_leaves_the_old_results_whole(files, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(files["root"] / "done_a", out)
    args = [sys.executable, "-m", "napari_dfa.cli", "predict", str(files["b"]), "--model", str(files["model"]),
            "--out", str(out), "--overwrite", "--geojson", "--areas", *RUN]
    for sig in (signal.SIGKILL, signal.SIGINT):
        launch = ["-c", "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                        "from napari_dfa.cli import main; sys.exit(main(sys.argv[1:]))"]
        stale = set(out.glob(".s.labels.zarr.*.tmp.zarr"))  # the SIGKILLed run's, until the lock clears it
        proc = subprocess.Popen([args[0], *launch, *args[3:]], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 600
        killed = False
        while time.monotonic() < deadline and proc.poll() is None:
            twins = [t for t in out.glob(".s.labels.zarr.*.tmp.zarr") if t not in stale]
            try:
                rows = zarr.open_group(str(twins[0]), mode="r").attrs["napari_dfa"]["rows_done"] if twins else 0
            except Exception:  # noqa: BLE001 - not created yet, or attributes mid-write
                rows = 0
            if rows > 0:
                proc.send_signal(sig)
                killed = True
                break
            time.sleep(0.01)
        proc.wait(timeout=600)
        assert killed, "the run ended before it could be interrupted"
        snap = snapshot(out)  # a's results, whole, and nothing of b's beside them
        np.testing.assert_array_equal(snap["labels"], files["done"]["a"]["labels"])
        assert snap["geojson"] == files["done"]["a"]["geojson"] and snap["areas"] == files["done"]["a"]["areas"]
        if sig == signal.SIGINT:
            assert proc.returncode == 130 and not leftovers(out / "s.labels.zarr")  # Ctrl-C tidies up itself
        else:
            assert leftovers(out / "s.labels.zarr")  # found by the next run
    assert main(["predict", str(files["b"]), "--model", str(files["model"]), "--out", str(out), "--overwrite",
                 "--geojson", "--areas", *RUN]) == 0
    snap = snapshot(out)
    np.testing.assert_array_equal(snap["labels"], files["done"]["b"]["labels"])
    assert snap["geojson"] == files["done"]["b"]["geojson"] and hidden(out) == []
    name = zarr.open_group(str(out / "s.labels.zarr"), mode="r").attrs["ome"]["multiscales"][0]["name"]
    assert name == "s.labels.zarr"  # not the twin's name it was written under


# --- leftovers of a killed export -------------------------------------------------------------------------
_KILL_AT_RENAME = textwrap.dedent("""
    import os, signal, sys
    real = os.replace
    K, n = int(sys.argv[1]), [0]
    def replace(src, dst):
        if not str(src).endswith(".partial"):  # zarr's own chunk writes are not counted
            n[0] += 1
            if n[0] == K:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)
    os.replace = replace
    from napari_dfa.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("suffix", [".zarr", ".geojson", ".tif"])
@pytest.mark.parametrize("kill_at", [1, 2])
def test_export_killed_between_its_renames_is_repaired_by_the_next_run(files, tmp_path, capsys, suffix, kill_at):
    src = files["root"] / "done_a" / "s.labels.zarr"
    dst = tmp_path / f"x{suffix}"
    assert main(["export", str(src), "--to", str(dst)]) == 0
    old = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    proc = subprocess.run([sys.executable, "-c", _KILL_AT_RENAME, str(kill_at), "export", str(src), "--to", str(dst),
                           "--overwrite"], capture_output=True, text=True)
    if proc.returncode == 0:  # a file output renames once: the second kill point is never reached
        assert suffix != ".zarr" and kill_at == 2
    else:
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        assert leftovers(dst)
    # the next run without --overwrite: the old output is back in place, so it is refused as existing
    assert main(["export", str(src), "--to", str(dst)]) == 1
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == old
    assert main(["export", str(src), "--to", str(dst), "--overwrite"]) == 0
    assert not leftovers(dst) and not (tmp_path / f"x{suffix}.lock").exists()


def test_report_names_what_it_cleared(tmp_path, caplog):
    dst = tmp_path / "r.json"
    dst.write_text(json.dumps({"old": 1}))
    twin = tmp_path / ".r.json.0123abcd.tmp.json"
    twin.write_text("{half")
    keep = tmp_path / ".r.json.notes"  # a hidden file of the user's: not ours, never removed
    keep.write_text("mine")
    with claim(dst):
        pass
    assert not twin.exists() and keep.read_text() == "mine"
    assert ".r.json.0123abcd.tmp.json" in caplog.text and "interrupted write" in caplog.text
    os.remove(keep)
