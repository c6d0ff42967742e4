"""The guard's stroke resampling (rules a and b on whole held-back strokes) against a plain
reference: the same draws, each resampling's confusion rows summed stroke by stroke, Dice and the
right-kept rule computed in exact fractions. Any change to what is summed, compared or drawn moves
the shares (the array tests of test_guard only see which side of a threshold they fall)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from napari_dfa.corrections.guard import (
    DROP_RESAMPLES,
    MIN_RESAMPLED_STROKES,
    RIGHT_SLACK,
    drop_holds,
    loss_holds,
)


def _random_strokes(seed: int, n: int, k: int = 3):
    """``n`` strokes of labels 1..k: per stroke its label, the old and the new model's labels over
    it counted (0..k), and how many pixels both label right."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(1, k + 1, n)
    classes[:MIN_RESAMPLED_STROKES] = 1  # enough strokes of label 1 to resample
    size = rng.integers(5, 60, n)
    old = np.stack([rng.multinomial(s, rng.dirichlet(np.ones(k + 1))) for s in size])
    new = np.stack([rng.multinomial(s, rng.dirichlet(np.ones(k + 1))) for s in size])
    both = np.array([rng.integers(0, min(o[c], w[c]) + 1) for o, w, c in zip(old, new, classes)])
    return classes, old, new, both


def _draws(n: int, resamples: int = DROP_RESAMPLES, seed: int = 0):
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=resamples)


def _reference(strokes, c: int):
    """(share of resamplings with c's Dice lower, share with c's right-kept loss) by plain sums."""
    classes, old, new, both = strokes
    if sum(1 for v in classes if v == c) < MIN_RESAMPLED_STROKES:
        return 1.0, 1.0
    worse = lost = drawn = 0
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
        right = sum(int(w[i]) * int(old[i][c]) for i in range(len(classes)) if classes[i] == c)
        now = sum(int(w[i]) * int(new[i][c]) for i in range(len(classes)) if classes[i] == c)
        kept = sum(int(w[i]) * int(both[i]) for i in range(len(classes)) if classes[i] == c)
        lost += kept < (1 - Fraction(RIGHT_SLACK).limit_denominator()) * right and now < right
    return worse / drawn, lost / drawn


@pytest.mark.parametrize("seed", range(6))
def test_shares_equal_a_plain_count_over_the_same_draws(seed):
    strokes = _random_strokes(seed, n=MIN_RESAMPLED_STROKES + 2 + seed)
    ref_drop, ref_loss = _reference(strokes, 1)
    assert drop_holds(strokes, 1) == pytest.approx(ref_drop, abs=1e-12)
    assert loss_holds(strokes, 1) == pytest.approx(ref_loss, abs=1e-12)


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
    classes, old, new, both = _random_strokes(3, n=9)
    few = classes.copy()
    few[:] = 2
    few[:4] = 1  # four strokes of label 1
    assert drop_holds((few, old, new), 1) == 1.0 and loss_holds((few, old, new, both), 1) == 1.0
    enough = few.copy()
    enough[4] = 1  # five
    assert drop_holds((enough, old, new), 1) == pytest.approx(_reference((enough, old, new, both), 1)[0])
    assert drop_holds((enough, old, new), 1) < 1.0
    assert drop_holds(None, 1) == 1.0 and loss_holds(None, 1) == 1.0
