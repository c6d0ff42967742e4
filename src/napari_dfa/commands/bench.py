"""``napari-dfa bench``: the bias-mode comparison on synthetic data (and training throughput)."""

from __future__ import annotations

HELP = "compare bias modes (none, cffa, difficulty, dfa, class-weighted CE) on synthetic data; Markdown table"


def add_arguments(parser) -> None:
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--preset", default="tiny", help="model preset (tiny fits a CPU)")
    parser.add_argument("--tile", type=int, default=128, help="tile and crop size")
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--n-val", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=32)
    parser.add_argument("--methods", default=",".join(("none", "cffa", "difficulty", "dfa", "weighted_ce")),
                        help="comma-separated subset of none,cffa,difficulty,dfa,weighted_ce")
    parser.add_argument("--out", default="runs/bench", help="folder for the runs and results")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--throughput", action="store_true", help="also measure training throughput (tiles/s)")


def run(args) -> int:
    import json
    import sys
    import time
    from pathlib import Path

    from tqdm import tqdm

    from ..errors import ConfigError
    from ..training.bench import METHODS, bench_config, bench_markdown, machine_info, run_bench, throughput

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"--methods: unknown {', '.join(bad)}; choose from {', '.join(METHODS)}")
    if args.tile % 32:
        raise ConfigError(f"--tile {args.tile} must be a multiple of 32")
    config = bench_config(epochs=args.epochs, preset=args.preset, tile=args.tile, n_train=args.n_train,
                          n_val=args.n_val, n_test=args.n_test)
    out = Path(args.out)
    t0 = time.perf_counter()
    with tqdm(total=0, unit="run", desc="bench", file=sys.stderr) as bar:

        def progress(done, total, method=None, seed=None):
            bar.total, bar.n = total, done
            bar.set_postfix(method=method, seed=seed, refresh=True)

        results = run_bench(methods=methods, seeds=range(args.seeds), config=config, out_dir=out,
                            device=args.device, progress=progress)
    minutes = (time.perf_counter() - t0) / 60
    lines = [
        f"Command: `napari-dfa bench --seeds {args.seeds} --epochs {args.epochs} --preset {args.preset} "
        f"--tile {args.tile} --n-train {args.n_train} --n-val {args.n_val} --n-test {args.n_test}`  ",
        f"Machine: {machine_info()}  ",
        f"Wall time: {minutes:.1f} min\n",
        bench_markdown(results),
    ]
    if args.throughput:
        r = throughput(config=config, device=args.device)
        lines.append(f"\nThroughput ({r['preset']}, batch {r['batch_size']}, {r['crop']}² crops, {r['device']}): "
                     f"pipeline {r['pipeline']:.1f} tiles/s, pre-loaded {r['preloaded']:.1f} tiles/s, "
                     f"ratio {r['ratio']:.2f}")
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (out / "results.md").write_text(text + "\n", encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n", encoding="utf-8")
    return 0
