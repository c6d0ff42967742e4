"""The guard's stroke resampling (rule a on whole held-back strokes) against a plain reference:
the same draws, each resampling's confusion rows summed stroke by stroke, Dice computed in exact
fractions. Any change to what is summed, compared or drawn moves
the shares (the array tests of test_guard only see which side of a threshold they fall)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from napari_dfa.corrections.guard import (
    DROP_RESAMPLES,
    MIN_RESAMPLED_STROKES,
    drop_holds,
)


def _random_strokes(seed: int, n: int, k: int = 3):
    """``n`` strokes of labels 1..k: per stroke its label, the old and the new model's labels over
    it counted (0..k)."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(1, k + 1, n)
    classes[:MIN_RESAMPLED_STROKES] = 1  # enough strokes of label 1 to resample
    size = rng.integers(5, 60, n)
    old = np.stack([rng.multinomial(s, rng.dirichlet(np.ones(k + 1))) for s in size])
    new = np.stack([rng.multinomial(s, rng.dirichlet(np.ones(k + 1))) for s in size])
    return classes, old, new


def _draws(n: int, resamples: int = DROP_RESAMPLES, seed: int = 0):
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=resamples)


def _reference(strokes, c: int):
    """Share of resamplings with c's Dice lower for the new model, by plain sums."""
    classes, old, new = strokes
    if sum(1 for v in classes if v == c) < MIN_RESAMPLED_STROKES:
        return 1.0
    worse = drawn = 0
    for w in _draws(len(classes)):
        if not any(w[i] and classes[i] == c for i in range(len(classes))):
            continue
        drawn += 1
        sums = {}
        for name, counts in (("old", old), ("new", new)):
            tp = sum(int(w[i]) * int(counts[i][c]) for i in range(len(classes)) if classes[i] == c)
            size = sum(int(w[i]) * int(counts[i].sum()) for i in range(len(classes)) if classes[i] == c)
            fp = sum(int(w[i]) * int(counts[i][c]) for i in range(len(classes)) if classes[i] != c)
            sums[name] = Fraction(2 * tp, max(tp + size + fp, 1))
        worse += sums["new"] < sums["old"]
    return worse / drawn


@pytest.mark.parametrize("seed", range(6))
def test_shares_equal_a_plain_count_over_the_same_draws(seed):
    strokes = _random_strokes(seed, n=MIN_RESAMPLED_STROKES + 2 + seed)
    assert drop_holds(strokes, 1) == pytest.approx(_reference(strokes, 1), abs=1e-12)


def test_draws_without_a_stroke_of_the_class_do_not_count():
    """Five strokes of label 1 among thirty: some draws hold none, and they say nothing about it."""
    classes, old, new = _random_strokes(21, n=30)
    classes[MIN_RESAMPLED_STROKES:] = np.where(classes[MIN_RESAMPLED_STROKES:] == 1, 2, classes[MIN_RESAMPLED_STROKES:])
    w = _draws(30)
    assert ((w[:, classes == 1].sum(1)) == 0).any()
    assert drop_holds((classes, old, new), 1) == pytest.approx(_reference((classes, old, new), 1), abs=1e-12)


def test_the_draws_are_seeded_and_whole_strokes():
    """The same strokes give the same share every time (a verdict must not change on a re-run), and
    another seed gives other draws."""
    strokes = _random_strokes(11, n=11)
    shares = {drop_holds(strokes, 1) for _ in range(3)}
    assert len(shares) == 1
    assert {drop_holds(strokes, 1, seed=s) for s in range(8)} != shares


def test_too_few_strokes_to_resample_leave_the_pooled_rule_to_decide():
    """Below MIN_RESAMPLED_STROKES strokes of a class a resampling says nothing (two confirmed
    blocks hold a few large pieces of each class): the pooled pixels decide (share 1.0)."""
    assert MIN_RESAMPLED_STROKES == 5
    classes, old, new = _random_strokes(3, n=9)
    few = classes.copy()
    few[:] = 2
    few[:4] = 1  # four strokes of label 1
    assert drop_holds((few, old, new), 1) == 1.0
    enough = few.copy()
    enough[4] = 1  # five
    assert drop_holds((enough, old, new), 1) == pytest.approx(_reference((enough, old, new), 1))
    assert drop_holds((enough, old, new), 1) < 1.0
    assert drop_holds(None, 1) == 1.0
