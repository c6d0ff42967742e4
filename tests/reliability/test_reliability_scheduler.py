"""A cluster that loses its workers (issue 23, cause 5), on a real dask scheduler and worker
processes on 127.0.0.1: a worker killed -9 mid-slide is reported, its slide runs again on another
worker and continues the store it began (labels as a local run); every worker killed ends the run
after --worker-timeout with a message naming the scheduler and the slides not done, and --resume
on a new worker finishes them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_dfa import synth
from napari_dfa.cli import main

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow,
              pytest.mark.skipif(shutil.which("dask", path=str(Path(sys.executable).parent)) is None,
                                 reason="the dask command line (distributed) is not installed")]

RUN = ["--tile", "128", "--overlap", "32", "--chunk", "64", "--device", "cpu", "--threads", "1", "--batch-size", "1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
DASK = str(Path(sys.executable).parent / "dask")


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_segmenter):
    root = tmp_path_factory.mktemp("cluster")
    model = tiny_segmenter().save(root / "tiny.safetensors")
    slides = [synth.write_slide(root / f"s{i}.tif", size=(640, 640), seed=i)[0] for i in (1, 2)]
    local = root / "local"
    assert main(["predict", *map(str, slides), "--model", str(model), "--out", str(local), *RUN]) == 0
    return {"root": root, "model": model, "slides": slides, "local": local}


class Cluster:
    """A dask scheduler and worker processes (no nanny: a killed worker stays dead) on 127.0.0.1."""

    def __init__(self, folder: Path):
        self.folder, self.workers = folder, []
        self.file = folder / "scheduler.json"
        self.scheduler = subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                           "--scheduler-file", str(self.file)], env=ENV,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while not self.file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.address = json.loads(self.file.read_text())["address"]

    def add_worker(self):
        proc = subprocess.Popen([DASK, "worker", "--scheduler-file", str(self.file), "--nthreads", "1", "--no-nanny",
                                 "--no-dashboard", "--host", "127.0.0.1", "--death-timeout", "60"], env=ENV,
                                cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, n: int):
        from dask.distributed import Client

        with Client(self.address, timeout="300s") as client:
            client.wait_for_workers(n, timeout=300)

    def close(self):
        for proc in [*self.workers, self.scheduler]:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=600)  # a killed process on a busy machine: generous


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


def _predict(files, out, cluster, *extra):
    return subprocess.Popen([sys.executable, "-m", "napari_dfa.cli", "predict", *map(str, files["slides"]),
                             "--model", str(files["model"]), "--out", str(out), "--scheduler", cluster.address,
                             *RUN, *extra], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_the_writer_of(store: Path, proc, cluster) -> int:
    """Wait until a worker has written rows of ``store``, then kill that worker -9 (its pid is in
    the store's lock file); returns the pid."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            rows = zarr.open_group(str(store), mode="r").attrs["napari_dfa"]["rows_done"]
            holder = (store.parent / (store.name + ".lock")).read_text()
        except Exception:  # noqa: BLE001 - not created yet, or mid-write
            rows, holder = 0, ""
        if rows > 0 and holder.startswith("pid "):
            pid = int(holder.split()[1])
            assert pid in {w.pid for w in cluster.workers}, holder
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.02)
    raise AssertionError(f"no worker wrote {store} in time: {proc.poll()} {proc.stderr.read() if proc.poll() else ''}")


def _same_as_local(files, out):
    for slide in files["slides"]:
        name = f"{Path(slide).stem}.labels.zarr"
        got = zarr.open_group(str(out / name), mode="r")
        assert got.attrs["napari_dfa"]["completed"]
        np.testing.assert_array_equal(np.asarray(got["0"][:]),
                                      np.asarray(zarr.open_group(str(files["local"] / name), mode="r")["0"][:]))


def test_a_lost_worker_is_reported_and_its_slide_continues_elsewhere(files, tmp_path, cluster):
    for _ in range(2):
        cluster.add_worker()
    cluster.wait_for_workers(2)
    out = tmp_path / "out"
    proc = _predict(files, out, cluster)
    _kill_the_writer_of(out / "s1.labels.zarr", proc, cluster)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    assert "lost the dask worker" in stderr and "exists; pass --resume" not in stderr
    _same_as_local(files, out)


def test_losing_every_worker_ends_the_run_with_a_message(files, tmp_path, cluster):
    cluster.add_worker()
    cluster.wait_for_workers(1)
    out = tmp_path / "out"
    proc = _predict(files, out, cluster, "--worker-timeout", "5")
    _kill_the_writer_of(out / "s1.labels.zarr", proc, cluster)
    stdout, stderr = proc.communicate(timeout=900)  # bounded by --worker-timeout, not by dask
    assert proc.returncode == 1, stderr[-3000:]
    assert f"--scheduler {cluster.address}: no dask worker connected for 5 s" in stderr
    assert "s1.tif" in stderr and "s2.tif" in stderr and "--resume" in stderr and "Traceback" not in stderr
    # a new worker and --resume finish both, as a local run would have
    cluster.add_worker()
    cluster.wait_for_workers(1)
    again = _predict(files, out, cluster, "--resume")
    stdout, stderr = again.communicate(timeout=900)
    assert again.returncode == 0, stderr[-3000:]
    _same_as_local(files, out)
