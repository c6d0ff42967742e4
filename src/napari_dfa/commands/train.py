"""``napari-dfa train`` (placeholder until its owner lands it)."""

from __future__ import annotations

HELP = "train (not implemented yet)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    raise NotImplementedError("napari-dfa train is not implemented yet")
