"""Argument checks the commands share (no Qt, no torch): every value is validated when argparse
reads it, so a bad one is one line naming the argument (``argument --chunk: must be a positive
integer, got 0``) before any model, slide or output folder is touched."""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path


def _int(text: str, what: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    value = _int(text, "a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    value = _int(text, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    import math

    try:
        value = float(str(text).strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def level(text: str):
    """argparse type: ``auto`` or a pyramid level ≥ 0."""
    if str(text).strip().lower() == "auto":
        return "auto"
    value = _int(text, "a level number >= 0 or 'auto'")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a level number >= 0 or 'auto', got {text!r}")
    return value


def region(text: str) -> tuple[int, int, int, int]:
    """argparse type: ``Y0,X0,H,W`` with a non-negative origin and positive sizes."""
    parts = str(text).replace(" ", "").split(",")
    try:
        values = tuple(int(v) for v in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"give four integers y0,x0,height,width, got {text!r}")
    y0, x0, h, w = values
    if y0 < 0 or x0 < 0:
        raise argparse.ArgumentTypeError(f"y0 and x0 must be >= 0 (pixels from the top-left), got {text!r}")
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"height and width must be positive, got {text!r}")
    return values


def choices_list(allowed: tuple[str, ...]):
    """argparse type: a comma list whose items are all in ``allowed`` (typos get a suggestion)."""

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(v.strip() for v in str(text).split(",") if v.strip())
        if not items:
            raise argparse.ArgumentTypeError(f"give a comma list of {', '.join(allowed)}")
        for item in items:
            if item not in allowed:
                raise argparse.ArgumentTypeError(f"{item!r} is not one of {', '.join(allowed)}{suggest(item, allowed)}")
        return items

    return parse


def suggest(word: str, known) -> str:
    """``"; did you mean 'epochs'?"`` for the nearest known word, or ``""``."""
    near = difflib.get_close_matches(str(word), list(known), n=1, cutoff=0.6)
    return f"; did you mean {near[0]!r}?" if near else ""


def resolve_model(text: str, *, argument: str = "--model") -> str:
    """``demo``, a checkpoint file, or a training run folder (its ``best.safetensors``)."""
    from ..errors import CheckpointError
    from ..model.validate import folder_hint

    if text == "demo":
        return text
    path = Path(text).expanduser()
    if path.is_dir():
        best = path / "best.safetensors"
        if best.is_file():
            return str(best)
        raise CheckpointError(f"{argument} {text}: a folder; {folder_hint(path)}")
    return str(path)


def quiet_dask(verbose: int) -> None:
    """dask/distributed log nothing below ERROR unless -v asked (a clean run prints no
    CommClosedError or "worker still alive ... killing" noise from shutting the cluster down)."""
    import logging

    level = logging.WARNING if verbose else logging.CRITICAL
    for name in ("distributed", "dask", "tornado", "asyncio", "bokeh"):
        logging.getLogger(name).setLevel(level)
