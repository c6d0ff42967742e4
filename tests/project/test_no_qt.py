"""The compute modules never import Qt or napari (the model knows no view)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE = [
    "napari_dfa",
    "napari_dfa.errors",
    "napari_dfa.classes",
    "napari_dfa.slide",
    "napari_dfa.synth",
    "napari_dfa.model",
    "napari_dfa.training",
    "napari_dfa.inference",
    "napari_dfa.labels",
    "napari_dfa.corrections",
    "napari_dfa.cli",
]


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_qt(module):
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} pulls in GUI modules: {out.stdout.strip()}"
