"""Training benchmarks (issue 3): throughput of the data pipeline, and DFA vs. baselines.

    python benchmarks/bench_training.py                  # both (the bias-mode part: ~15-25 min on 2 CPU cores)
    python benchmarks/bench_training.py --throughput-only
    python benchmarks/bench_training.py --device cuda    # on a GPU

Throughput: tiles/s of the full pipeline (SAM-Path dataset in memory, augmentation with HED stain
jitter, collation, transfer, forward, backward, AdamW step) against forward+backward+step on one
pre-loaded batch of the same size; the ratio says whether the data pipeline keeps the model fed
(goal >= 0.9). Bias modes: `napari-dfa bench` (see napari_dfa.training.comparison).
"""

from __future__ import annotations

import argparse
import sys
import time

from _harness import machine_line, table_head
from napari_dfa.training.comparison import comparison_config as bench_config
from napari_dfa.training.comparison import comparison_markdown, run_comparison
from napari_dfa.training.throughput import throughput


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--throughput-only", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=30, help="timed steps per throughput measurement")
    ap.add_argument("--out", default="runs/bench")
    args = ap.parse_args(argv)

    print("## Training throughput\n")
    print(f"Machine: {machine_line()}  ")
    print(f"Command: `python benchmarks/bench_training.py {' '.join(argv or sys.argv[1:])}`\n")
    print(*table_head(["preset", "batch × crop", "device", "loader workers", "pipeline tiles/s", "pre-loaded tiles/s",
                       "ratio"], "lllrrrr"), sep="\n")
    cases = [("tiny", 8, 128), ("small", 8, 128)]
    if args.device != "cpu":
        cases += [("small", 16, 256), ("base", 8, 256)]
    for preset, batch, crop in cases:
        cfg = bench_config(preset=preset, tile=crop, batch_size=batch, n_train=32, n_val=4, n_test=4)
        for workers in (0, 1, 2) if args.device != "cpu" else (0, 1):
            r = throughput(config=cfg, steps=args.steps, device=args.device, num_workers=workers)
            print(f"| {preset} | {batch} × {crop}² | {r['device']} | {workers} | {r['pipeline']:.1f} "
                  f"| {r['preloaded']:.1f} | {r['ratio']:.2f} |", flush=True)
    if args.throughput_only:
        return 0
    print("\n## DFA vs. baselines on synthetic data\n")
    t0 = time.perf_counter()
    results = run_comparison(seeds=range(args.seeds), config=bench_config(epochs=args.epochs), out_dir=args.out,
                             device=args.device)
    print(f"{args.seeds} seeds × {len(results['methods'])} methods, {args.epochs} epochs each, tiny preset, 128² tiles; "
          f"{(time.perf_counter() - t0) / 60:.1f} min\n")
    print(comparison_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
