"""``napari-dfa train``: train a recipe (training/*.toml) on one process or under torchrun."""

from __future__ import annotations

import os

HELP = "train a DFA model from a recipe (training/*.toml); multi-GPU with torchrun"


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="recipe TOML, e.g. training/synthetic.toml")
    parser.add_argument("--data", default=None, help="dataset folder (SAM-Path layout: img/, mask/, CSV img_id,fold)")
    parser.add_argument("--out", default=None, help="run folder (default runs/<recipe name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    parser.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch_size")
    parser.add_argument("--init", default=None, help="start from this checkpoint (.safetensors or 'demo')")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override any recipe key, e.g. --set data.crop=64 --set model.preset=tiny (VALUE in TOML syntax)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def parse_overrides(items: list[str]) -> dict:
    """``["data.crop=64", "lr=1e-3"]`` → ``{"data": {"crop": 64}, "lr": 0.001}`` (values parsed as TOML)."""
    import tomllib

    from ..errors import ConfigError

    out: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set data.crop=64")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word is a string
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_recipe(args):
    from ..training import TrainConfig

    config = TrainConfig.from_toml(args.config)
    changes = parse_overrides(args.set)
    for name in ("epochs", "seed", "batch_size", "init"):
        if getattr(args, name, None) is not None:
            changes[name] = getattr(args, name)
    return config.replace(**changes) if changes else config


def run(args) -> int:
    import sys

    from tqdm import tqdm

    from ..training.trainer import train

    config = load_recipe(args)
    main = int(os.environ.get("RANK", "0")) == 0
    bar = tqdm(total=0, unit="batch", desc=f"train {config.name}", disable=not main, file=sys.stderr)

    def progress(done, total, epoch=None, loss=None):
        bar.total = total
        bar.n = done
        bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}" if loss is not None else None, refresh=False)
        bar.refresh()

    try:
        result = train(config, data_root=args.data, out_dir=args.out, resume=args.resume, device=args.device,
                       progress=progress, plots=not args.no_plots)
    finally:
        bar.close()
    if main:
        last = result.history[-1] if result.history else {}
        print(f"run folder: {result.out_dir}")
        if result.best_epoch and result.best_mdice == result.best_mdice:  # not NaN
            print(f"best epoch {result.best_epoch}: validation mDice {result.best_mdice:.4f}")
        elif result.best_epoch:
            print(f"best epoch {result.best_epoch}: lowest training loss (no validation split, fold 0)")
        names = result.class_names
        if last:
            print("| class | f_c | val Dice | val IoU | b_c |")
            print("| --- | ---: | ---: | ---: | ---: |")
            for k, name in enumerate(names):
                d, i = last.get(f"dice_{name}"), last.get(f"iou_{name}")
                print(f"| {name} | {result.frequencies[k]:.3f} | {'—' if d is None else f'{d:.3f}'} "
                      f"| {'—' if i is None else f'{i:.3f}'} | {last[f'b_{name}']:+.3f} |")
        print(f"checkpoints: {result.best_path}, {result.last_path}")
    return 0
