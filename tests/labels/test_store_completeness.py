"""How far a labels store got, from its attributes (what `--resume` and the Segment widget read):
worked out by hand, including the stores written before the counter existed."""

from __future__ import annotations

import pytest

from napari_dfa.labels.store import completeness


@pytest.mark.parametrize("info, total, done, completed, fraction", [
    ({}, 10, 0, False, 0.0),  # nothing written yet
    ({"completed": True}, 10, 10, True, 1.0),  # an older finished store without the row counter
    ({"rows_done": 4}, 10, 4, False, 0.4),
    ({"rows_done": 0, "completed": False}, 10, 0, False, 0.0),
    ({"rows_done": 50}, 10, 10, False, 1.0),  # never more than the level has
    ({"rows_done": -3}, 10, 0, False, 0.0),
    ({"rows_done": "7"}, 10, 7, False, 0.7),
    ({}, 0, 0, False, 1.0),  # an empty level is whole
])
def test_completeness_of_a_stores_attributes(info, total, done, completed, fraction):
    c = completeness(info, total)
    assert c == {"completed": completed, "rows_done": done, "rows_total": total,
                 "fraction": pytest.approx(fraction), "partial": False}


def test_a_partial_store_says_so():
    assert completeness({"completed": True, "partial": True}, 4)["partial"] is True
    assert completeness({"completed": True, "partial": 0}, 4)["partial"] is False
