"""Synthetic data generation speed and memory: tiles, a SAM-Path dataset, pyramidal slides.

    python benchmarks/bench_synth.py [--slide-sizes 4096 8192] [--repeats 20]

Prints a Markdown table. Slides are written in a child process each, so that its peak resident
memory (VmHWM) is the writer's own; it is compared with the size of the level-0 RGB image,
which the writer never holds in memory (it renders 512-pixel bands and spills lower levels to
scratch files read back band by band).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from _children import write_slide_memory
from _harness import machine_line, run_child, table_head


def bench_tiles(size: int, repeats: int) -> tuple[float, float]:
    from napari_dfa.synth import SynthConfig, generate_tile

    config = SynthConfig()
    generate_tile(config, 0, size=size)  # warm-up: lattice tables, imports
    walls, cpus = [], []
    for i in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        generate_tile(config, (1, i), size=size)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return float(np.median(walls)), float(np.median(cpus))


def bench_dataset(n: int, tile: int) -> float:
    from napari_dfa.synth import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_dataset(tmp, n_train=n, n_val=0, n_test=0, tile=tile, seed=0)
        return time.perf_counter() - t0


def bench_slide(size: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "slide.tif"
        stats = run_child(write_slide_memory, size, str(out))
        stats["file_mb"] = out.stat().st_size / 1e6
        stats["truth_mb"] = (Path(tmp) / "slide_truth.tif").stat().st_size / 1e6
        return stats


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide-sizes", type=int, nargs="*", default=[4096, 8192, 16384])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    print("### Synthetic data generation\n")
    import scipy

    print(f"Machine: {machine_line(torch=False)}, numpy {np.__version__}, scipy {scipy.__version__}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n")
    print(*table_head(["what", "wall", "CPU", "notes"]), sep="\n")
    for size in (256, 512):
        wall, cpu = bench_tiles(size, args.repeats)
        print(f"| `generate_tile` {size}×{size} (median of {args.repeats}) | {wall * 1e3:.0f} ms "
              f"| {cpu * 1e3:.0f} ms | |")
    n = 32
    wall = bench_dataset(n, 256)
    print(f"| `write_dataset` {n} tiles of 256² (PNG) | {wall:.2f} s | | {n / wall:.1f} tiles/s |")
    for size in args.slide_sizes:
        s = bench_slide(size)
        rgb_mb = size * size * 3 / 1e6
        print(f"| `write_slide` {size}×{size} (JPEG q85 + truth) | {s['wall']:.1f} s | {s['cpu']:.1f} s | "
              f"peak RSS {s['maxrss_kb'] / 1024:.0f} MiB ({s['base_kb'] / 1024:.0f} MiB after imports) "
              f"vs {rgb_mb:.0f} MB level-0 RGB; "
              f"files {s['file_mb']:.1f} MB + truth {s['truth_mb']:.2f} MB |")


if __name__ == "__main__":
    main()
