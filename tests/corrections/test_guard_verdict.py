"""The guard's verdict in full, worked out by hand: what it compares where nothing is verified
(regions, masks, class shares, agreement), each branch's exact words, and every threshold at its
edge (the array tests of test_guard check which side of a threshold a verdict falls, with room
around it; mutation testing showed an edge moved by one comparison passed them)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dfa.corrections import guard
from napari_dfa.corrections.guard import (
    CLASS_DROP,
    MIN_GAIN,
    NEEDS_CONFIRMATION,
    PROMOTED,
    REJECTED,
    SATURATED,
    HeldOut,
    RegionComparison,
    judge,
)

OLD = ["a", "b", "c"]
NEW = ["a", "B2", "c", "d"]  # b renamed B2, d added
RENAMES = {"b": "B2"}


def _conf(rows, k=4):
    conf = np.zeros((k + 1, k + 1), np.int64)
    for (v, o), n in rows.items():
        conf[v, o] = n
    return conf


def _regions():
    """Four regions judged and one too small; totals worked out in the comments."""
    # r1, 400 px: left a, right b; the new model keeps a, and on the right B2 / c / d by rows.
    old1 = np.zeros((20, 20), np.uint8)
    old1[:, :10], old1[:, 10:] = 1, 2
    new1 = old1.copy()
    new1[10:15, 10:] = 3  # b -> c: 50 px, compared, disagree
    new1[15:, 10:] = 4  # b -> d (a new class): 50 px, not in the agreement
    # r2: a where the tissue mask says tissue (rows 0-24), minus corrected rows 0-2 and replayed
    # rows 3-5; rows 20-22 have no old label: rows 6-19 and 23-24, 16 rows x 20 = 320 px compared,
    # all still a; rows 25-29 are a outside the tissue (the new model calls them c): not compared.
    # The masks come as 0/1 integers, as a caller may pass them.
    old2 = np.ones((30, 20), np.uint8)
    old2[20:23] = 0
    new2 = np.ones_like(old2)
    new2[:6] = 3
    new2[25:] = 3
    tissue2 = np.zeros(old2.shape, np.uint8)
    tissue2[:25] = 1
    corrected2 = np.zeros(old2.shape, np.uint8)
    corrected2[:3] = 3
    trained2 = np.zeros(old2.shape, np.uint8)
    trained2[3:6] = 1
    # r3, 400 px of an old label beyond the old list (9: read as its last class, c); new c.
    old3 = np.full((20, 20), 9, np.uint8)
    new3 = np.full((20, 20), 3, np.uint8)
    # r4: exactly the smallest region judged (256 px): a -> a, but 16 px the new model calls glass.
    old4 = np.ones((16, 16), np.uint8)
    new4 = old4.copy()
    new4[0] = 0
    # r5: 225 px, too few to judge (would add 225 disagreeing pixels).
    old5 = np.ones((15, 15), np.uint8)
    new5 = np.full((15, 15), 2, np.uint8)
    return [RegionComparison("r5", old5, new5), RegionComparison("r1", old1, new1),
            RegionComparison("r2", old2, new2, corrected=corrected2, trained=trained2, tissue=tissue2),
            RegionComparison("r3", old3, new3), RegionComparison("r4", old4, new4)]


def _held(**kw):
    base = dict(old={"a": 0.6, "B2": 0.5}, new={"a": 0.7, "B2": 0.66}, pixels={"a": 500, "B2": 100},
                confusion=_conf({(1, 1): 500, (2, 1): 100}))
    base.update(kw)
    return HeldOut(**base)


def test_a_promoted_verdict_in_full():
    v = judge(_held(), _regions(), old_names=OLD, new_names=NEW, renames=RENAMES)
    # compared (r5 too small): r1 400 + r2 320 + r3 400 + r4 256 = 1376 px; both known: r1 350,
    # r2 320, r3 400, r4 240 (16 px of glass in the new labels) = 1310; agreeing: 300 + 320 + 400 + 240.
    total = 1376
    assert v.status == PROMOTED and v.promoted and not v.needs_confirmation
    assert v.compared_pixels == total
    assert v.agreement == pytest.approx(1260 / 1310)
    assert v.regions == [{"name": "r1", "pixels": 400, "agreement": pytest.approx(300 / 350)},
                         {"name": "r2", "pixels": 320, "agreement": 1.0},
                         {"name": "r3", "pixels": 400, "agreement": 1.0},
                         {"name": "r4", "pixels": 256, "agreement": 1.0}]
    before = {"a": 200 + 320 + 256, "B2": 200, "c": 400, "d": 0}
    after = {"a": 200 + 320 + 240, "B2": 100, "c": 450, "d": 50}
    assert v.shares == {n: {"before": pytest.approx(before[n] / total), "after": pytest.approx(after[n] / total),
                            "new_class": n == "d"} for n in NEW}
    assert v.held_out_old == pytest.approx(0.55) and v.held_out_new == pytest.approx(0.68)
    assert v.problems == []
    assert v.reason == ("The fine-tuned model is better on the verified pixels held back to test it (mean Dice "
                        "0.55 → 0.68: a 0.60 → 0.70, B2 0.50 → 0.66), and no verified class got worse. Where "
                        "nothing is verified it would change 4 % of the tissue (shown in magenta): look before "
                        "accepting.")
    d = v.as_dict()
    assert d["held_out"] == {"old_mean": pytest.approx(0.55), "new_mean": pytest.approx(0.68),
                             "per_class": {"B2": {"old": 0.5, "new": 0.66, "pixels": 100},
                                           "a": {"old": 0.6, "new": 0.7, "pixels": 500}},
                             "too_few": {}}
    assert d["status"] == "promoted" and d["promoted"] is True and d["regions"] == v.regions
    assert d["agreement_outside_corrections"] == v.agreement and d["compared_pixels"] == total


def test_a_rejected_verdict_names_each_problem():
    held = _held(old={"a": 0.6, "B2": 0.5, "d": 0.3}, new={"a": 0.45, "B2": 0.9, "d": 0.9},
                 pixels={"a": 500, "B2": 100, "d": 150},
                 confusion=_conf({(1, 1): 500, (2, 1): 100, (4, 1): 150}),
                 right_kept={1: (400, 280, 300)})
    v = judge(held, _regions(), old_names=OLD, new_names=NEW, renames=RENAMES)
    assert v.status == REJECTED
    assert v.problems == ["a got worse on the held-back corrections (Dice 0.60 → 0.45)",
                          "it gets 30 % of the held-back a you verified wrong where the old model had it right "
                          "(at most 20 %)"]
    assert v.reason == ("Kept the old model: a got worse on the held-back corrections (Dice 0.60 → 0.45); it "
                        "gets 30 % of the held-back a you verified wrong where the old model had it right (at "
                        "most 20 %). Reject it, and paint or confirm more of what it gets wrong.")


def test_asking_verdicts_say_what_would_settle_them():
    regions = _regions()[1:2]
    # nothing scored, two classes verified
    v = judge(HeldOut(confusion=_conf({(1, 1): 50, (2, 1): 50})), regions, old_names=OLD, new_names=NEW,
              renames=RENAMES)
    assert v.status == NEEDS_CONFIRMATION and v.held_out_old is None and v.held_out_new is None
    assert v.as_dict()["held_out"]["old_mean"] is None
    assert v.reason.startswith("Too little verified to test the new model on a, B2: strokes are held back whole, "
                               "and these classes have only one. Paint one more stroke of a and of B2 somewhere "
                               "else, or confirm a region with them (Looks right)")
    # nothing verified at all
    v = judge(HeldOut(), regions, old_names=OLD, new_names=NEW, renames=RENAMES)
    assert v.reason.startswith("Too little verified to test the new model on any class: ")
    # every verified pixel where the model was wrong (class a only: not the one-class rule first)
    v = judge(HeldOut(old={"a": 0.1, "B2": 0.0}, new={"a": 0.8, "B2": 0.7}, confusion=_conf({(1, 2): 300, (2, 1): 1})),
              regions, old_names=OLD, new_names=NEW, renames=RENAMES)
    assert v.reason.startswith("Every verified pixel lies where the model was wrong: that shows what the new model "
                               "learnt, not whether it got worse where the model was right. Confirm a region")
    # one verified class; a row 0 in the evidence is not a class
    v = judge(HeldOut(old={"a": 0.1}, new={"a": 0.8}, confusion=_conf({(1, 1): 300, (0, 2): 50})), regions,
              old_names=OLD, new_names=NEW, renames=RENAMES)
    assert v.reason.startswith("All your verified pixels are a: the held-back strokes test whether the model finds "
                               "a, not whether it now paints it where it does not belong.")


def test_a_single_verified_pixel_counts_as_a_verified_class():
    v = judge(HeldOut(old={"a": 0.1}, new={"a": 0.8}, confusion=_conf({(1, 1): 300, (2, 2): 1})), _regions()[1:2],
              old_names=OLD, new_names=NEW, renames=RENAMES)
    assert v.status == PROMOTED, v.reason


def test_only_the_last_classes_wrong_asks_for_a_confirmed_region():
    """Verified pixels of the last known class only, all where the model was wrong."""
    v = judge(HeldOut(old={"c": 0.1}, new={"c": 0.8}, confusion=_conf({(3, 1): 300})), _regions()[1:2],
              old_names=OLD, new_names=NEW, renames=RENAMES)
    assert v.reason.startswith("Every verified pixel lies where the model was wrong")
    v = judge(HeldOut(old={"a": 0.1}, new={"a": 0.8}, confusion=_conf({(1, 2): 300})), _regions()[1:2],
              old_names=OLD, new_names=NEW, renames=RENAMES)
    assert v.reason.startswith("Every verified pixel lies where the model was wrong")


def test_without_regions_nothing_is_said_about_unverified_tissue():
    v = judge(_held(), [], old_names=OLD, new_names=NEW, renames=RENAMES)
    assert v.status == PROMOTED and v.agreement is None and v.compared_pixels == 0 and v.shares == {}
    assert v.reason.endswith("and no verified class got worse.")
    # a region whose every pixel is now a new class or glass: compared, but no agreement to give
    old = np.ones((20, 20), np.uint8)
    v = judge(_held(), [RegionComparison("r", old, np.full_like(old, 4))], old_names=OLD, new_names=NEW,
              renames=RENAMES)
    assert v.compared_pixels == 400 and v.agreement is None and v.regions == [{"name": "r", "pixels": 400,
                                                                               "agreement": None}]


def test_evidence_of_the_wrong_shape_is_no_evidence():
    """No evidence matrix, or one of another class list: the held-back scores alone decide."""
    verdicts = [judge(_held(confusion=conf), _regions()[1:2], old_names=OLD, new_names=NEW, renames=RENAMES)
                for conf in (None, np.ones((3, 3), np.int64), np.zeros((5, 5), np.int64))]
    assert {v.status for v in verdicts} == {PROMOTED} and len({v.reason for v in verdicts}) == 1


@pytest.mark.parametrize("value, text", [(0.0, "0 %"), (0.01, "1 %"), (0.005, "0.5 %"), (0.00645, "0.6 %"),
                                         (0.25, "25 %"), (1.0, "100 %")])
def test_percentages_in_words(value, text):
    assert guard._pct(value) == text


# Thresholds at their edge: one comparison turned (< into <=, > into >=) moves each verdict.

def _judge_scores(old, new, **kw):
    held = HeldOut(old=old, new=new, pixels={n: 500 for n in old}, confusion=_conf({(1, 1): 500, (2, 1): 100}), **kw)
    return judge(held, _regions()[1:2], old_names=OLD, new_names=NEW, renames=RENAMES)


def test_equal_is_not_better():
    assert _judge_scores({"a": 0.5, "B2": 0.5}, {"a": 0.5, "B2": 0.5}).status == REJECTED


def test_saturated_at_its_edge():
    s = SATURATED
    assert _judge_scores({"a": s, "B2": s}, {"a": s - 0.005, "B2": s - 0.005}).status == PROMOTED
    edge = 0.99 - 0.01
    assert _judge_scores({"a": 0.99, "B2": 0.99}, {"a": edge, "B2": edge}).status == PROMOTED
    # at SATURATED a small gain is not asked about
    assert _judge_scores({"a": s, "B2": s}, {"a": s + 0.01, "B2": s + 0.01}).status == PROMOTED


def test_a_class_drop_of_exactly_class_drop_is_allowed():
    v = _judge_scores({"a": 0.8, "B2": 0.2}, {"a": 0.8 - CLASS_DROP, "B2": 0.9})
    assert v.status == PROMOTED, v.reason


def test_a_gain_of_exactly_min_gain_promotes():
    g = 0.5 + MIN_GAIN
    assert _judge_scores({"a": 0.5, "B2": 0.5}, {"a": g, "B2": g}).status == PROMOTED


def test_changing_exactly_look_share_is_promoted():
    old = np.ones((20, 20), np.uint8)
    new = old.copy()
    new[:5] = 2  # 100 of 400 px: 25 %
    v = judge(_held(), [RegionComparison("r", old, new)], old_names=OLD, new_names=NEW, renames=RENAMES)
    assert v.agreement == 0.75 and v.status == PROMOTED, v.reason


def _kept(right_kept, **kw):
    # a's Dice rises by less than CLASS_DROP: a loss is not traded by it
    held = _held(new={"a": 0.65, "B2": 0.7}, pixels={"a": 10, "B2": 100, "c": 10, "d": 10}, right_kept=right_kept,
                 **kw)
    return judge(held, _regions()[1:2], old_names=OLD, new_names=NEW, renames=RENAMES)


def test_rule_b_at_its_edges():
    assert _kept({1: (1000, 800, 800)}).status == PROMOTED  # exactly RIGHT_SLACK lost
    assert _kept({1: (1000, 700, 1000)}).status == PROMOTED  # as many right as before: traded
    assert _kept({1: (100, 70, 70)}).status == REJECTED  # exactly MIN_RIGHT_PIXELS: judged
    # label 0 and a label beyond the list are not classes; a skipped class does not end the loop,
    # and the last class is judged
    assert _kept({0: (1000, 0, 0), 9: (1000, 0, 0)}).status == PROMOTED
    assert _kept({2: (50, 0, 0), 4: (1000, 700, 700)}).status == REJECTED


def test_rule_b_a_dice_rise_of_exactly_class_drop_is_a_trade():
    held = _held(new={"a": 0.6 + CLASS_DROP, "B2": 0.7}, pixels={"a": 10, "B2": 100},
                 right_kept={1: (1000, 700, 700)})
    assert judge(held, _regions()[1:2], old_names=OLD, new_names=NEW, renames=RENAMES).status == PROMOTED


def test_rule_b_trade_by_dice_reads_the_old_score():
    """A class with an old score but none new (not scored now) is not traded by a default."""
    held = _held(old={"a": 0.6, "B2": 0.5, "c": 0.8}, pixels={"a": 10, "B2": 100, "c": 10},
                 right_kept={3: (1000, 700, 700)})
    assert judge(held, _regions()[1:2], old_names=OLD, new_names=NEW, renames=RENAMES).status == REJECTED
    # neither score known: only the pixel counts decide
    held = _held(pixels={"a": 10, "B2": 100}, right_kept={3: (1000, 700, 700)})
    assert judge(held, _regions()[1:2], old_names=OLD, new_names=NEW, renames=RENAMES).status == REJECTED


def test_a_held_out_class_outside_the_list_is_judged_on_its_pooled_drop():
    """"zz" is not in the new list: no strokes of it to resample, its pooled drop counts (not the
    resampled share of label 1, whose drop rests on one of six strokes)."""
    rows = np.zeros((8, 5), np.int64)
    old, new = rows.copy(), rows.copy()
    old[:6, 1] = 10
    new[:6, 1] = 10
    new[0, 1], new[0, 3] = 0, 10  # one "a" stroke of six lost
    strokes = (np.array([1, 1, 1, 1, 1, 1, 2, 2]), old, new)
    assert guard.drop_holds(strokes, 1) < guard.DROP_HOLDS
    v = _judge_scores({"a": 0.5, "B2": 0.2, "zz": 0.9}, {"a": 0.9, "B2": 0.9, "zz": 0.5}, strokes=strokes)
    assert v.status == REJECTED and "zz got worse" in v.reason


def test_a_share_of_exactly_drop_holds_counts(monkeypatch):
    """At DROP_HOLDS itself the drop counts."""
    rng = np.random.default_rng(5)
    classes = np.array([1, 1, 1, 1, 1, 2, 2, 2])
    strokes = (classes, rng.integers(0, 30, (8, 5)), rng.integers(0, 30, (8, 5)))
    share = guard.drop_holds(strokes, 1)
    assert 0 < share < 1
    monkeypatch.setattr(guard, "DROP_HOLDS", share)
    v = _judge_scores({"a": 0.8, "B2": 0.1}, {"a": 0.5, "B2": 0.9}, strokes=strokes)
    assert v.status == REJECTED, v.reason
