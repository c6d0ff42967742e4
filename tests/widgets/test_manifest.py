"""The plugin is installed as napari sees it: a valid npe2 manifest whose commands import."""

from __future__ import annotations

import subprocess
import sys
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path

import yaml

import napari_dfa

MANIFEST = Path(napari_dfa.__file__).with_name("napari.yaml")


def test_manifest_registered_through_entry_point():
    eps = [ep for ep in entry_points(group="napari.manifest") if ep.name == "napari-dfa"]
    assert eps, "napari-dfa is not registered under the napari.manifest entry point"
    assert eps[0].value == "napari_dfa:napari.yaml"


def test_npe2_validate_passes():
    out = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari_dfa"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_every_manifest_command_resolves():
    manifest = yaml.safe_load(MANIFEST.read_text())
    for command in manifest["contributions"]["commands"]:
        module_name, _, attr = command["python_name"].partition(":")
        module = import_module(module_name)
        assert callable(getattr(module, attr)), command["python_name"]
