"""``napari-dfa synth`` (placeholder until its owner lands it)."""

from __future__ import annotations

HELP = "synth (not implemented yet)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    raise NotImplementedError("napari-dfa synth is not implemented yet")
