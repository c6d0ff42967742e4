"""``napari-dfa bench`` (placeholder until its owner lands it)."""

from __future__ import annotations

HELP = "bench (not implemented yet)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    raise NotImplementedError("napari-dfa bench is not implemented yet")
