"""What the benchmark scripts share: the machine line, memory readers, functions run in a fresh
interpreter that report JSON, Markdown tables, and the correction tests' fixtures.

The scripts import it as ``_harness`` (their own folder is the first entry of ``sys.path`` when
run as ``python benchmarks/bench_*.py``). It imports only the standard library at the top:
``bench_gpu.py`` runs under any Python that has torch, and ``bench_anchor.py``'s TIAToolbox child
under ``.venv-tia``.

Child runs: ``run_child(fn, *args)`` runs ``fn(*args)`` — a module-level function of a benchmark
script or of ``_children.py``, its arguments and result JSON — in a fresh interpreter, as
``python benchmarks/_harness.py SCRIPT FUNCTION ARGS``: this file loads SCRIPT as a module (its
``main`` does not run), calls the function and prints its result on a line of its own after
:data:`RESULT`, which the parent reads back (anything else the child prints is passed over).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULT = "RESULT "  # prefix of the line a child process reports on


# -- the machine ----------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(torch: bool = True) -> str:
    """One line: OS, CPU model, what ``napari-dfa bench`` records of the machine (CPU, cores, torch
    and its threads, GPU, Python: ``napari_dfa.training.throughput.machine_info``), RAM;
    ``torch=False`` (scripts that never import torch): cores and Python in place of the middle."""
    try:
        import psutil

        ram = f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM"
    except ImportError:
        ram = "RAM unknown"
    if torch:
        from napari_dfa.training.throughput import machine_info

        rest = machine_info()
    else:
        rest = f"{os.cpu_count()} CPU cores visible, Python {platform.python_version()}"
    return f"{platform.platform()}, {cpu_model()}, {rest}, {ram}"


# -- memory ---------------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    """A field of /proc/self/status in KiB (None where there is no /proc)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Resident memory of this process now, MiB (VmRSS; psutil where there is no /proc)."""
    kib = _status_kib("VmRSS")
    if kib is None:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    return kib / 1024


def hwm_kib() -> int | None:
    """VmHWM: peak resident set of this process image, KiB (``ru_maxrss`` would include the
    parent's, which Linux folds in across fork + exec)."""
    return _status_kib("VmHWM")


def peak_rss_mb() -> float:
    """Peak resident memory of this process and of any it waited for (DataLoader workers), MiB."""
    import resource

    kib = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return kib / 1024


# -- child runs -----------------------------------------------------------------------------------
class ChildFailed(subprocess.CalledProcessError):
    """A child that reported no result: its exit status, command, stdout and stderr."""

    def tail(self, lines: int) -> str:
        """The last ``lines`` lines of its stderr (of its stdout where stderr is empty)."""
        return "\n".join((self.stderr or self.stdout or "").strip().splitlines()[-lines:])

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.tail(15)}"


def run_child(fn, *args, python=None, env: dict | None = None, cwd=None):
    """``fn(*args)`` in a fresh interpreter (``python``: default this one); returns what it
    returned, through JSON. ``fn`` is a module-level function of a file in this folder; the
    arguments go as JSON too. Raises :class:`ChildFailed` when the child reports nothing."""
    script = Path(sys.modules[fn.__module__].__file__).resolve()
    cmd = [str(python or sys.executable), str(Path(__file__).resolve()), str(script), fn.__name__, json.dumps(args)]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    raise ChildFailed(proc.returncode, cmd, proc.stdout, proc.stderr)


def _child(script: str, name: str, args: str) -> None:
    spec = importlib.util.spec_from_file_location(Path(script).stem, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    result = getattr(module, name)(*json.loads(args))
    print(RESULT + json.dumps(result), flush=True)


# -- Markdown tables ------------------------------------------------------------------------------
def table_row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table_head(columns, align: str = "") -> list[str]:
    """The header and rule of a Markdown table; ``align``: a letter a column, ``l`` or ``r``
    (right-aligned numbers), ``l`` where it is short."""
    align = align.ljust(len(columns), "l")
    return [table_row(columns), table_row("---:" if a == "r" else "---" for a in align)]


def markdown_table(rows, columns, align: str = "") -> list[str]:
    """A Markdown table's lines: the head (see :func:`table_head`) and a line a row of cells."""
    return [*table_head(columns, align), *(table_row(r) for r in rows)]


# -- the correction tests' fixtures ---------------------------------------------------------------
def correction_fixtures():
    """``tests/correction_fixtures.py``: what a simulated pathologist paints and how it is scored,
    which the correction tests own and the guard and stain benchmarks replay. The tests import it
    as a top-level module from their folder, so the folder goes on the path here, once."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import correction_fixtures

    return correction_fixtures


if __name__ == "__main__":
    _child(*sys.argv[1:])
