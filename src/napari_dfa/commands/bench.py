"""``napari-dfa bench``: does the learned class bias help? The paired method comparison on any
dataset (synthetic by default, or a SAM-Path folder), and training throughput.

Settings come, in this order of precedence, from the explicit flags, ``--quick``, the ``--config``
file, and the defaults of :func:`napari_dfa.training.comparison.comparison_config`.
"""

from __future__ import annotations

HELP = ("compare none / DFA / DFA-out / difficulty / logit adjustment ... with paired seeds on synthetic data or "
        "a SAM-Path folder; Markdown + JSON")

# Mirrors of napari_dfa.training.comparison (importing it here would load torch for `--help`);
# tests/test_bench.py checks they agree.
METHOD_NAMES = ("none", "cffa", "difficulty", "dfa", "dfa-out", "dfa-warm-only", "dfa-cold", "logit_adjust",
                "weighted_ce")
DEFAULT_METHODS = ("none", "dfa", "dfa-out", "difficulty", "logit_adjust")
DEFAULT_SEEDS = 6
# --quick: a CI-sized smoke run of the whole path (minutes on 2 CPU cores), not a benchmark.
QUICK = {"preset": "tiny", "tile": 64, "epochs": 2, "seeds": 2, "n_train": 8, "n_val": 2, "n_test": 2,
         "batch_size": 4, "methods": "none,dfa"}


def add_arguments(parser) -> None:
    parser.add_argument("--data", default=None, metavar="FOLDER",
                        help="a SAM-Path folder (img/, mask/ PNG labels 0 = ignore, a CSV img_id,fold with -1 test, "
                             "0 val, >= 1 train; class names from classes.json or synth.json in it, or --classes). "
                             "Default: the synthetic generator")
    parser.add_argument("--classes", default=None, metavar="A,B,...", help="class names of labels 1..K (with --data)")
    parser.add_argument("--config", default=None, metavar="TOML",
                        help="comparison file: a [synth] table (generator frequencies / difficulties), recipe keys "
                             "(epochs, batch_size, [model], [data], ...) and a [bench] table (seeds, methods, jobs); "
                             "e.g. training/gpu_bench.toml")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"number of paired seeds 0..N-1 (default {DEFAULT_SEEDS}: the fewest for which the sign "
                             "test can reach p < 0.05)")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated, from {','.join(METHOD_NAMES)} (default {','.join(DEFAULT_METHODS)}; "
                             "none is always run: it is the reference)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--preset", default=None, help="model preset (tiny fits a CPU; small is the demo model's)")
    parser.add_argument("--tile", type=int, default=None, help="crop size (and synthetic tile size)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--n-train", type=int, default=None, help="synthetic training tiles")
    parser.add_argument("--n-val", type=int, default=None, help="synthetic validation tiles")
    parser.add_argument("--n-test", type=int, default=None, help="synthetic test tiles")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers per training run")
    parser.add_argument("--jobs", type=int, default=None,
                        help="training runs at the same time, one process each (GPU: a small model leaves most of "
                             "the device idle); default 1")
    parser.add_argument("--quick", action="store_true",
                        help="CI-sized smoke run: tiny preset, 64 px, 2 epochs, 2 seeds, none,dfa (flags still win)")
    parser.add_argument("--out", default="runs/bench", help="folder for the runs, results.md and results.json")
    parser.add_argument("--markdown", default=None,
                        help="also write the report to this file (and the JSON results beside it, same name .json)")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"),
                        help="cuda fails at once when CUDA is not available")
    parser.add_argument("--throughput", action="store_true", help="also measure training throughput (tiles/s)")


def _resolve(args):
    """(recipe, seeds, methods, jobs, probe_images) from defaults < --config < --quick < flags."""
    from ..errors import ConfigError
    from ..training.comparison import comparison_config, load_comparison_toml
    from ..training.datasets import folder_config

    config, bench = comparison_config(), {}
    if args.config:
        config, bench = load_comparison_toml(args.config, config)
    quick = QUICK if args.quick else {}

    def pick(name, bench_value=None):
        value = getattr(args, name)
        if value is not None:
            return value
        if name in quick:
            return quick[name]
        return bench_value

    seeds = pick("seeds", bench.get("seeds", DEFAULT_SEEDS))
    methods = pick("methods", bench.get("methods", list(DEFAULT_METHODS)))
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    jobs = pick("jobs", bench.get("jobs", 1))
    probe = int(bench.get("probe_images", 8))
    top = {k: v for k, v in {"epochs": pick("epochs"), "batch_size": pick("batch_size"), "lr": pick("lr"),
                              "num_workers": pick("num_workers")}.items() if v is not None}
    config = config.replace(**top) if top else config
    if pick("preset") is not None:
        config = config.replace(model={"preset": pick("preset")})
    data = {}
    tile = pick("tile")
    if tile is not None:
        if tile % 32:
            raise ConfigError(f"--tile {tile} must be a multiple of 32")
        data["crop"] = tile
        if not args.data:
            data["synth_tile"] = tile
    for flag, key in (("n_train", "synth_n_train"), ("n_val", "synth_n_val"), ("n_test", "synth_n_test")):
        if pick(flag) is not None:
            data[key] = pick(flag)
    if data:
        config = config.replace(data=data)
    if args.data:
        config = folder_config(config, args.data, classes=args.classes)
    elif args.classes:
        raise ConfigError("--classes names the classes of a --data folder; the synthetic data has its own")
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds} must be >= 1")
    return config, list(range(seeds)), methods, jobs, probe


def _command(args) -> str:
    parts = ["napari-dfa bench"]
    for name in ("data", "classes", "config", "seeds", "methods", "epochs", "preset", "tile", "batch_size", "lr",
                 "n_train", "n_val", "n_test", "num_workers", "jobs"):
        value = getattr(args, name)
        if value is not None:
            parts.append(f"--{name.replace('_', '-')} {value}")
    if args.quick:
        parts.append("--quick")
    parts.append(f"--device {args.device}")
    return " ".join(parts)


def run(args) -> int:
    import json
    import sys
    import time
    from pathlib import Path

    from tqdm import tqdm

    from ..training.comparison import comparison_markdown, run_comparison
    from ..training.throughput import machine_info, throughput

    config, seeds, methods, jobs, probe = _resolve(args)
    out = Path(args.out)
    t0 = time.perf_counter()
    with tqdm(total=0, unit="run", desc="bench", file=sys.stderr) as bar:

        def progress(done, total, method=None, seed=None):
            bar.total, bar.n = total, done
            bar.set_postfix(method=method, seed=seed, refresh=True)

        results = run_comparison(methods=methods, seeds=seeds, config=config, out_dir=out, device=args.device,
                                 jobs=jobs, probe_images=probe, progress=progress)
    minutes = (time.perf_counter() - t0) / 60
    results["command"] = _command(args)
    results["machine"] = machine_info()
    results["wall_minutes"] = round(minutes, 2)
    lines = [
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']}  ",
        f"Wall time: {minutes:.1f} min ({config.epochs} epochs, batch {config.batch_size}, "
        f"preset {config.model.get('preset')}, {len(seeds)} seeds × {len(results['methods'])} methods)\n",
        comparison_markdown(results),
    ]
    if args.throughput:
        r = throughput(config=config, device=args.device, num_workers=config.num_workers)
        results["throughput"] = r
        lines.append(f"\nThroughput ({r['preset']}, batch {r['batch_size']}, {r['crop']}² crops, {r['device']}, "
                     f"{r['num_workers']} loader workers): pipeline {r['pipeline']:.1f} tiles/s, pre-loaded "
                     f"{r['preloaded']:.1f} tiles/s, ratio {r['ratio']:.2f}")
    text = "\n".join(lines)
    print(text)
    payload = json.dumps(results, indent=1, default=str)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(payload, encoding="utf-8")
    (out / "results.md").write_text(text + "\n", encoding="utf-8")
    if args.markdown:
        md = Path(args.markdown)
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(text + "\n", encoding="utf-8")
        md.with_suffix(".json").write_text(payload, encoding="utf-8")
    return 0
