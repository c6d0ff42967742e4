"""``napari-dfa export`` (placeholder until its owner lands it)."""

from __future__ import annotations

HELP = "export (not implemented yet)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    raise NotImplementedError("napari-dfa export is not implemented yet")
