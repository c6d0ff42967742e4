"""Resume that is what it says (issue 23, cause 4): the training state carries the weights of its
own epoch, so a run killed at any moment (before, between or after its two files, or inside an
epoch) resumes to the same weights as an uninterrupted run, bit for bit, with the same history; a
state without weights whose epoch differs from last.safetensors is refused with a message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from napari_dfa.model import read_checkpoint

REPO = Path(__file__).resolve().parents[2]
TOML = str(REPO / "training" / "synthetic.toml")
SMALL = ["--set", "model.preset=tiny", "--set", "data.crop=64", "--set", "data.synth_tile=64",
         "--set", "data.synth_n_train=6", "--set", "data.synth_n_val=2", "--set", "data.synth_n_test=2",
         "--set", "batch_size=4", "--set", "warmup_steps=0", "--device", "cpu", "--no-plots", "--epochs", "3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread everywhere: the same float sums in every run

# Train, and die -9 at a chosen moment of epoch 2 (1-based): "before_last" (nothing of it saved),
# "between" (last.safetensors written, its training state not), "after_state" (both, before the
# logs), "in_epoch" (as its first batch starts).
_KILLED = textwrap.dedent("""
    import os, signal, sys
    import napari_dfa.training.trainer as T
    moment, K = sys.argv[1], 2
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    real_state, real_save, real_epoch = T.save_train_state, T._Run._save, T._Run.train_epoch

    def save_state(*a, epoch, **k):
        if moment == "between" and epoch == K:
            die()
        real_state(*a, epoch=epoch, **k)
        if moment == "after_state" and epoch == K:
            die()

    def save(self, path, epoch):
        if moment == "before_last" and epoch == K and path.name == "last.safetensors":
            die()
        return real_save(self, path, epoch)

    def train_epoch(self, epoch, *a, **k):
        if moment == "in_epoch" and epoch + 1 == K:
            die()
        return real_epoch(self, epoch, *a, **k)

    T.save_train_state, T._Run._save, T._Run.train_epoch = save_state, save, train_epoch
    from napari_dfa.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def _train(out, *extra, killed_at=None):
    code = ["-c", _KILLED, killed_at] if killed_at else ["-m", "napari_dfa.cli"]
    return subprocess.run([sys.executable, *code, "train", "--config", TOML, "--out", str(out), *SMALL, *extra],
                          capture_output=True, text=True, env=ENV)


def _history(run):
    rows = json.loads((run / "history.json").read_text())["epochs"]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run"
    proc = _train(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["before_last", "between", "after_state", "in_epoch"])
def test_resume_after_a_kill_at_any_moment_equals_an_uninterrupted_run(whole, tmp_path, moment):
    out = tmp_path / "run"
    proc = _train(out, killed_at=moment)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    if moment == "between":  # the case of the issue: last is epoch 2, its state epoch 1
        assert read_checkpoint(out / "last.safetensors").provenance["epoch"] == 2
        with safe_open(str(out / "last_state.safetensors"), "pt") as fh:
            assert fh.metadata()["epoch"] == "1"
    proc = subprocess.run([sys.executable, "-m", "napari_dfa.cli", "train", "--resume", "--out", str(out),
                           "--device", "cpu", "--no-plots"], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if moment == "between":
        assert "resuming after epoch 1 with the weights saved in the state" in proc.stderr
    expected = read_checkpoint(whole / "last.safetensors").state_dict
    got = read_checkpoint(out / "last.safetensors").state_dict
    differ = [k for k in expected if not (got[k] == expected[k]).all()]
    assert differ == [], f"{len(differ)} tensors differ from the uninterrupted run, e.g. {differ[:3]}"
    assert _history(out) == _history(whole)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no hidden leftovers


def test_a_state_without_weights_from_another_epoch_is_refused(whole, tmp_path):
    out = tmp_path / "run"
    assert _train(out, killed_at="between").returncode == -signal.SIGKILL
    state = out / "last_state.safetensors"
    with safe_open(str(state), "pt") as fh:  # as an earlier version wrote it: no weights
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys() if not k.startswith("model.")}
    save_file(tensors, str(state), metadata=meta)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    proc = subprocess.run([sys.executable, "-m", "napari_dfa.cli", "train", "--resume", "--out", str(out),
                           "--device", "cpu", "--no-plots"], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 1
    assert "cannot resume exactly" in proc.stderr and "epoch 2" in proc.stderr and "epoch 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
