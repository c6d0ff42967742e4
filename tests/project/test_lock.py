"""The lock (requirements/lock.txt) and pyproject.toml agree: every dependency the two commands
install is pinned, inside the range pyproject.toml allows. `make lock` regenerates the lock."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"
# Extras left out of the lock on purpose: timm pulls torchvision, which swaps in a CUDA torch.
UNLOCKED_EXTRAS = {"timm"}


def read_lock(text: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line)
        if m is None:
            raise ValueError(f"{LOCK.name}: not a plain pin: {raw!r}")
        pins[canonicalize_name(m.group(1))] = Version(m.group(2))
    return pins


def locked_requirements(pyproject: dict) -> list[Requirement]:
    project = pyproject["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra, items in project["optional-dependencies"].items():
        if extra not in UNLOCKED_EXTRAS:
            reqs += [Requirement(r) for r in items]
    own = canonicalize_name(project["name"])
    return [r for r in reqs if canonicalize_name(r.name) != own]


def disagreements(pyproject: dict, pins: dict[str, Version]) -> list[str]:
    problems = []
    for req in locked_requirements(pyproject):
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req.name} ({req}) is missing from the lock: run `make lock`")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"the lock pins {req.name}=={pins[name]}, outside pyproject's {req}")
    return problems


def test_every_dependency_is_locked_within_its_range():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert disagreements(pyproject, read_lock(LOCK.read_text())) == []


def test_the_check_fails_on_a_missing_package_and_a_pin_out_of_range():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = read_lock(LOCK.read_text())
    missing = dict(pins)
    del missing["zarr"]
    assert any(p.startswith("zarr (") and "missing" in p for p in disagreements(pyproject, missing))
    widened = dict(pins, numpy=Version("1.20"))
    assert any("numpy==1.20" in p for p in disagreements(pyproject, widened))


def test_the_lock_is_portable():
    """No path or URL of the machine that wrote it, and public versions only (torch 2.13.0 admits
    the CPU wheel here and a CUDA build of 2.13.0 alike)."""
    text = LOCK.read_text()
    assert "file://" not in text and " @ " not in text
    assert not [v for v in read_lock(text).values() if v.local]
    assert read_lock(text)["torch"] == Version("2.13.0")


@pytest.mark.parametrize("line", ["napari-dfa @ file:///work/main", "torch>=2"])
def test_a_line_that_is_not_a_pin_is_refused(line):
    with pytest.raises(ValueError, match="not a plain pin"):
        read_lock(line)
