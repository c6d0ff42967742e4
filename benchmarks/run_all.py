"""`make bench`: run every benchmark script in this folder, one after another.

Each `bench_*.py` prints its own table (Markdown) and says which machine it ran on; results go into
BENCHMARKS.md by hand, with the command, so the numbers there are always traceable to a run.
``bench_gpu.py`` needs a CUDA GPU and has its own target (`make bench-gpu`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

here = Path(__file__).parent
failed = []
GPU_ONLY = {"bench_gpu.py"}
for script in sorted(p for p in here.glob("bench_*.py") if p.name not in GPU_ONLY):
    print(f"\n===== {script.name} =====", flush=True)
    if subprocess.call([sys.executable, str(script)]) != 0:
        failed.append(script.name)
if failed:
    sys.exit(f"benchmarks failed: {', '.join(failed)}")
