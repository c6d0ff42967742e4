"""``napari-dfa demo`` (placeholder until its owner lands it)."""

from __future__ import annotations

HELP = "demo (not implemented yet)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    raise NotImplementedError("napari-dfa demo is not implemented yet")
