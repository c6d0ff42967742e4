"""``napari-dfa`` command line: one subcommand per module in :mod:`napari_dfa.commands`.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``
and imports its heavy dependencies (torch, napari) inside ``run`` so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

from . import __version__
from .errors import DFAError

COMMANDS = ("demo", "synth", "train", "evaluate", "bench", "predict", "export", "export-model", "finetune",
            "bench-corrections")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-dfa",
        description="Whole-slide tissue segmentation with Dynamic Focal Attention (DFA).",
    )
    parser.add_argument("--version", action="version", version=f"napari-dfa {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = import_module(f"napari_dfa.commands.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


# Arguments that name files or folders: "~" is expanded in every one of them, in one place (the
# shell does it only at the start of a word, so "--out=~/x" used to create a folder named "~").
PATH_ARGS = ("slide", "slides", "model", "out", "json", "corrections", "also", "data", "config", "init", "labels",
             "to", "bioimageio", "truth", "markdown")


def expand_paths(args) -> None:
    """``~`` expanded in the path arguments of ``args`` (strings, lists, and lists of pairs)."""
    import os

    def expand(value):
        if isinstance(value, str):
            return os.path.expanduser(value) if value.startswith("~") else value
        if isinstance(value, (list, tuple)):
            return type(value)(expand(v) for v in value)
        return value

    for name in PATH_ARGS:
        if hasattr(args, name):
            setattr(args, name, expand(getattr(args, name)))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    expand_paths(args)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from .commands._args import quiet_dask

    quiet_dask(args.verbose)  # dask/distributed chatter only with -v
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except DFAError as exc:
        # Expected failures (bad file, bad config): one clear line, no traceback.
        print(f"napari-dfa {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"napari-dfa {args.command}: interrupted; work written so far is kept", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback with -v
        if args.verbose:
            raise
        print(f"napari-dfa {args.command}: unexpected error: {type(exc).__name__}: {exc} "
              "(run with -v for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # `python -m napari_dfa.cli`, also what torchrun launches
    sys.exit(main())
