"""``napari-dfa predict`` (placeholder until its owner lands it)."""

from __future__ import annotations

HELP = "predict (not implemented yet)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    raise NotImplementedError("napari-dfa predict is not implemented yet")
