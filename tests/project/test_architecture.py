"""The architecture as a contract: `lint-imports` checks the rules in .importlinter, and there is
no import cycle anywhere in the package (function-level imports included)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "napari_dfa"


def _lint(pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint), "--no-cache", str(REPO / ".importlinter")], cwd=REPO, env=env,
                          capture_output=True, text=True)


def test_contracts_are_kept():
    out = _lint()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "broken" not in out.stdout.split("Contracts:")[-1].replace("0 broken", "")


def test_a_forbidden_import_breaks_the_contract(tmp_path):
    """The check can fail: a copy of the package whose model imports the slide is refused."""
    copy = tmp_path / "napari_dfa"
    shutil.copytree(SRC, copy, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    bias = copy / "model" / "bias.py"
    bias.write_text(bias.read_text() + "\nfrom ..slide import open_slide  # noqa: E402,F401\n")
    out = _lint(tmp_path)
    assert out.returncode != 0
    assert "The model never imports slides" in out.stdout
    assert "napari_dfa.model.bias -> napari_dfa.slide" in out.stdout


def test_no_import_cycles():
    graph = grimp.build_graph("napari_dfa")
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_a_short_top_level():
    """At most ~10 modules directly under src/napari_dfa: the rest lives in packages by concept."""
    modules = sorted(p.name for p in SRC.glob("*.py"))
    assert len(modules) <= 10, modules
