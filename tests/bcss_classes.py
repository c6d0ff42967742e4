"""BCSS's five classes as the tests use them. The names are the library's
(:data:`napari_dfa.classes.BCSS`); the colours are BCSS's before stroma turned green there, which the
tests' models, stores and exports carry (so a test's colours stay its own when a default changes)."""

from __future__ import annotations

from napari_dfa.classes import BCSS

NAMES = list(BCSS.names)
COLORS = [(60, 110, 255), (230, 40, 40), (255, 170, 200), (160, 160, 160), (240, 200, 40)]
