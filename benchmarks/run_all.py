"""`make bench`: run every benchmark script in this folder, one after another.

Each `bench_*.py` prints its own table (Markdown) and says which machine it ran on; results go into
BENCHMARKS.md by hand, with the command, so the numbers there are always traceable to a run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

here = Path(__file__).parent
failed = []
for script in sorted(here.glob("bench_*.py")):
    print(f"\n===== {script.name} =====", flush=True)
    if subprocess.call([sys.executable, str(script)]) != 0:
        failed.append(script.name)
if failed:
    sys.exit(f"benchmarks failed: {', '.join(failed)}")
