"""`napari-dfa` is installed as a console script and every subcommand answers --help."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from napari_dfa.cli import COMMANDS, main


def test_console_script_installed():
    exe = shutil.which("napari-dfa") or shutil.which("napari-dfa", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "napari-dfa console script not on PATH"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: napari-dfa " + command in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: napari-dfa" in capsys.readouterr().out
