"""``napari-dfa evaluate`` (placeholder until its owner lands it)."""

from __future__ import annotations

HELP = "evaluate (not implemented yet)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    raise NotImplementedError("napari-dfa evaluate is not implemented yet")
