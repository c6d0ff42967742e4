"""``napari-dfa train``: train a recipe (training/*.toml) on one process or under torchrun.

Every ``--set`` key is checked against the recipe's dataclasses (and the model config) before any
data is read; a typo gets the nearest key. ``--resume`` continues the run as its ``recipe.json``
records it: options that contradict it are refused, since the README promises the same weights as
an uninterrupted run. A run folder that holds a run is not overwritten without ``--overwrite``.
"""

from __future__ import annotations

import os

HELP = "train a DFA model from a recipe (training/*.toml); multi-GPU with torchrun"


def add_arguments(parser) -> None:
    from ._args import non_negative_int, positive_int

    parser.add_argument("--config", default=None,
                        help="recipe TOML, e.g. training/synthetic.toml (not needed with --resume --out RUN)")
    parser.add_argument("--data", default=None,
                        help="dataset folder (SAM-Path layout: img/, mask/ PNG labels 0 = ignore, a CSV img_id,fold; "
                             "class names from its classes.json or synth.json, or --classes)")
    parser.add_argument("--classes", default=None, metavar="A,B,...",
                        help="class names of labels 1..K of the --data folder (instead of its classes.json)")
    parser.add_argument("--out", default=None, help="run folder (default runs/<recipe name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint, with the recipe it recorded")
    parser.add_argument("--overwrite", action="store_true", help="start over in a run folder that holds a run")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--epochs", type=positive_int, default=None, help="override the recipe's epochs")
    parser.add_argument("--seed", type=non_negative_int, default=None, help="override the recipe's seed")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="override the recipe's batch_size")
    parser.add_argument("--init", default=None, help="start from this checkpoint (.safetensors, a run folder or 'demo')")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override any recipe key, e.g. --set data.crop=64 --set model.preset=tiny (VALUE in TOML syntax)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def parse_overrides(items: list[str]) -> dict:
    """``["data.crop=64", "lr=1e-3"]`` → ``{"data": {"crop": 64}, "lr": 0.001}`` (values parsed as
    TOML), every key and value type checked against the recipe (see :func:`check_overrides`)."""
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
        parts = [p.strip() for p in key.strip().split(".")]
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} was set to a value above; it is not a table")
        node[parts[-1]] = value
    check_overrides(out)
    return out


def _tables():
    """The recipe's tables: key prefix → the dataclass whose fields it takes."""
    from ..model.config import ModelConfig
    from ..synth import SynthConfig
    from ..training.config import AugmentConfig, DataConfig, TrainConfig

    return {"": TrainConfig, "data": DataConfig, "augment": AugmentConfig, "model": ModelConfig,
            "data.synth": SynthConfig}


def _type_ok(kind: str, value) -> bool:
    """Whether ``value`` (from TOML) fits a field annotated ``kind`` (a string: postponed annotations)."""
    if "None" in kind and value is None:
        return True
    base = kind.replace(" | None", "").replace("None | ", "").strip()
    if base == "bool":
        return isinstance(value, bool)
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if base == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base == "str":
        return isinstance(value, str)
    if base.startswith(("tuple", "list")):
        return isinstance(value, (list, tuple))
    if base.startswith("dict"):
        return isinstance(value, dict)
    return True  # an annotation this check does not know: the dataclass decides


def check_overrides(changes: dict, prefix: str = "") -> None:
    """Every key of ``changes`` a field of its table, every value of the field's type; the error
    names the key and, for a typo, the nearest known one. Runs before any data is touched."""
    import dataclasses

    from ..errors import ConfigError
    from ._args import suggest

    tables = _tables()
    kind = tables[prefix]
    fields = {f.name: f for f in dataclasses.fields(kind)} if dataclasses.is_dataclass(kind) else {}
    fields.pop("source", None)
    extra = {"use_prior_in_forward": "bool"} if prefix == "model" else {}
    for key, value in changes.items():
        full = f"{prefix}.{key}" if prefix else key
        if full in tables and full != prefix:
            if not isinstance(value, dict):
                raise ConfigError(f"--set {full}={value!r}: {full} is a table; set one of its keys, e.g. "
                                  f"--set {full}.{next(iter(f.name for f in dataclasses.fields(tables[full])))}=...")
            check_overrides(value, full)
            continue
        if key not in fields and key not in extra:
            known = [f"{prefix + '.' if prefix else ''}{n}" for n in [*fields, *extra]]
            known += [t for t in tables if t and t.count(".") == (prefix.count(".") + 1 if prefix else 0)
                      and t.startswith(prefix)]
            raise ConfigError(f"--set {full}: unknown key{suggest(full, known)} "
                              f"(keys of {'[' + prefix + ']' if prefix else 'the recipe'}: "
                              f"{', '.join(sorted({k.rsplit('.', 1)[-1] for k in known}))})")
        annotation = extra.get(key) or str(fields[key].type)
        if not _type_ok(annotation, value):
            hint = (f" (a TOML string needs quotes inside the shell's: --set '{full}=\"...\"')"
                    if annotation.startswith("str") else "")
            raise ConfigError(f"--set {full}={value!r}: {full} must be {annotation}, got "
                              f"{type(value).__name__}{hint}")


def load_recipe(args):
    from ..training import TrainConfig

    config = TrainConfig.from_toml(args.config)
    changes = explicit_changes(args)
    return config.replace(**changes) if changes else config


def explicit_changes(args) -> dict:
    """What the command line changes in a recipe: ``--set`` keys and the shortcut flags."""
    from ._args import resolve_model

    changes = parse_overrides(args.set)
    for name in ("epochs", "seed", "batch_size", "init"):
        if getattr(args, name, None) is not None:
            changes[name] = getattr(args, name)
    if changes.get("init") not in (None, "", "demo"):
        changes["init"] = resolve_model(str(changes["init"]), argument="--init")
    return changes


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key in ("data", "augment", "model", "data.synth"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def _same(a, b) -> bool:
    def norm(x):
        if isinstance(x, (list, tuple)):
            return [norm(v) for v in x]
        if isinstance(x, bool) or x is None or isinstance(x, str):
            return x
        if isinstance(x, (int, float)):
            return float(x)
        return x

    return norm(a) == norm(b)


def resume_recipe(args, out_dir, toml_config):
    """The run's own recipe (``recipe.json``) with the command line checked against it."""
    import json
    import logging
    from pathlib import Path

    from ..errors import ConfigError
    from ..training import TrainConfig

    logger = logging.getLogger(__name__)
    path = Path(out_dir) / "recipe.json"
    if not path.is_file():
        raise ConfigError(f"{out_dir}: nothing to resume (no recipe.json; not a run folder of napari-dfa train); "
                          "run without --resume")
    try:
        saved = TrainConfig.from_dict(json.loads(path.read_text(encoding="utf-8")), source=str(path))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable recipe ({exc}); the run folder is damaged") from None
    recorded = _flatten(saved.to_dict())
    changes = _flatten(explicit_changes(args))
    conflicts = {k: v for k, v in changes.items() if k in recorded and not _same(v, recorded[k])}
    # More epochs keep the same weights only when the LR schedule does not depend on the total.
    extend = set(conflicts) == {"epochs"} and saved.schedule in ("constant", "step") and conflicts["epochs"] > saved.epochs
    if conflicts and not extend:
        listed = ", ".join(f"{k}={v!r} (the run has {recorded[k]!r})" for k, v in conflicts.items())
        why = (" (the run's LR schedule depends on the total epochs)" if "epochs" in conflicts
               and saved.schedule not in ("constant", "step") else "")
        raise ConfigError(f"--resume continues the run as {path} records it; these options differ from it: "
                          f"{listed}{why}. Leave them out to resume, or start a new run (another --out, "
                          f"or --init {Path(out_dir) / 'last.safetensors'})")
    if toml_config is not None:
        # The data folder's keys were set from the folder when the run started (with_folder_classes).
        folder_keys = {"data.kind", "data.root", "data.classes", "data.class_names", "data.class_colors"}
        differ = sorted(k for k, v in _flatten(toml_config.to_dict()).items()
                        if k in recorded and not _same(v, recorded[k]) and k not in changes and k not in folder_keys)
        if differ:
            logger.warning("%s differs from %s in %s; resuming with the run's recorded recipe", args.config, path,
                           ", ".join(differ))
    if extend:
        logger.warning("resuming %s with epochs %d (the run was set to %d; its LR schedule %r does not depend on it)",
                       out_dir, conflicts["epochs"], saved.epochs, saved.schedule)
        return saved.replace(epochs=conflicts["epochs"])
    return saved


def with_folder_classes(config, args):
    """The recipe on its dataset folder (``--data``, else a ``sampath`` recipe's ``[data] root``) with
    the folder's class names, checked against those the recipe names before any training: another
    dataset's names never reach a checkpoint. A synthetic recipe without ``--data`` is unchanged."""
    from ..errors import ConfigError
    from ..training.datasets import folder_config

    folder = args.data or (config.data.root if config.data.kind == "sampath" else None)
    if folder:
        return folder_config(config, folder, classes=args.classes)
    if config.data.kind == "sampath":
        raise ConfigError(f"{config.source or 'the recipe'}: no dataset folder; pass --data <folder with img/, "
                          "mask/ and a CSV img_id,fold> or set [data] root")
    if args.classes:
        raise ConfigError("--classes names the classes of a --data folder; the synthetic data has its own")
    return config


def run(args) -> int:
    from pathlib import Path

    from ..errors import ConfigError

    if args.config is None and not (args.resume and args.out):
        raise ConfigError("--config is required (with --resume, --out RUN_FOLDER alone is enough)")
    toml_config = load_recipe(args) if args.config else None  # checks --set before any data work
    out_dir = Path(args.out) if args.out else Path("runs") / toml_config.name
    if args.resume:
        config = resume_recipe(args, out_dir, toml_config)
    else:
        config = toml_config
        if any((out_dir / n).exists() for n in ("last.safetensors", "best.safetensors", "recipe.json")) \
                and not args.overwrite:
            raise ConfigError(f"{out_dir} holds a training run; pass --resume to continue it or --overwrite to "
                              "start over (its checkpoints are replaced)")
    if args.data is not None and not Path(args.data).is_dir():
        what = "a file" if Path(args.data).is_file() else "not found"
        raise ConfigError(f"--data {args.data}: dataset folder {what} (SAM-Path layout: img/, mask/, CSV img_id,fold)")
    from ..files.outputs import check_output

    check_output(out_dir, folder=True, what="--out",
                 inputs=[("--config", args.config), ("--data", args.data), ("--init", config.init or None)])
    config = with_folder_classes(config, args)
    if config.data.class_names:  # checked (names, count) before any training, not at the first save
        from ..classes import check_class_names

        check_class_names(config.data.class_names, what=f"the class list of {args.data or config.source or 'the recipe'}")
    main = int(os.environ.get("RANK", "0")) == 0
    with _claim_run(out_dir, main):
        return _train(config, args, out_dir, main)


# What napari-dfa train keeps in a run folder (another command never replaces these).
RUN_FILES = ("best.safetensors", "last.safetensors", "last_state.safetensors", "recipe.json", "history.json",
             "history.csv")


def _claim_run(out_dir, main: bool):
    """One training process per run folder (rank 0 holds ``<run>.lock``), and the hidden files
    an interrupted run left beside its checkpoints cleared."""
    import contextlib

    from ..files.outputs import claim, clear_leftovers

    if not main:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(claim(out_dir))
    try:
        for name in RUN_FILES:
            clear_leftovers(out_dir / name)
    except BaseException:
        stack.close()
        raise
    return stack


def _train(config, args, out_dir, main: bool) -> int:
    import sys

    from tqdm import tqdm

    from ..training.trainer import train

    bar = tqdm(total=0, unit="batch", desc=f"train {config.name}", disable=not main, file=sys.stderr)

    def progress(done, total, epoch=None, loss=None):
        bar.total = total
        bar.n = done
        bar.set_postfix(epoch=epoch, loss=f"{loss:.4f}" if loss is not None else None, refresh=False)
        bar.refresh()

    try:
        result = train(config, out_dir=out_dir, resume=args.resume, device=args.device,
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
