"""The user's path: the wheel built from the repo installs into a clean venv with the lock as
constraints, and its ``napari-dfa demo --headless`` runs from the installed package alone."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"

pytestmark = pytest.mark.slow


def run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_the_wheel_installs_in_a_clean_venv_and_runs_the_headless_demo(tmp_path):
    # sdist first, then the wheel from the sdist (build's default): what a user gets from PyPI.
    run([sys.executable, "-m", "build", "--outdir", tmp_path / "dist", ROOT])
    (wheel,) = (tmp_path / "dist").glob("napari_dfa-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in ("napari_dfa/napari.yaml", "napari_dfa/weights/demo.safetensors", "napari_dfa/weights/demo.json"):
        assert data in names, f"{data} is not in the wheel"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    run([py, "-m", "pip", "install", "-q", "-c", LOCK, wheel])

    # Run from an empty folder with a clean environment: nothing of the repo is importable.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    work = tmp_path / "work"
    work.mkdir()
    out = work / "demo"
    proc = run([env_dir / "bin" / "napari-dfa", "demo", "--headless", "--out", out], cwd=work, env=env)
    where = run([py, "-c", "import napari_dfa; print(napari_dfa.__file__)"], cwd=work, env=env).stdout
    assert str(env_dir) in where, f"napari_dfa imported from {where}, not the installed wheel"
    written = sorted(p.name for p in out.iterdir())
    assert any(n.endswith(".png") for n in written), (written, proc.stdout)
    assert any(n.endswith(".zarr") for n in written) or any(n.endswith(".tif") for n in written), written
