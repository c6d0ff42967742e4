"""The hold-out's bookkeeping worked out by hand: which pixels train and which are held back, the
counts per class, which classes can be scored and which have too few, strokes a model was trained
on found again by their signature, all of it the same for the same seed. (Whole strokes, each
stroke once, never a seen stroke: tests/training/test_finetune.py; these pin the counts and names
the guard reads.)"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from napari_dfa.training.holdout import (
    MIN_HELD_OUT_PIXELS,
    all_stroke_signatures,
    fold_strokes,
    plan_folds,
    plan_holdout,
    right_kept,
    seen_stroke_maps,
    split_holdout_by_stroke,
    stroke_counts,
    stroke_signature,
    trained_strokes,
)

NAMES = ["x", "y", "z"]


def _segmenter(strokes=()):
    prov = {"finetune": {"strokes": list(strokes)}} if strokes else {}
    return SimpleNamespace(num_classes=3, class_names=NAMES, metadata={"provenance": prov})


def _samples():
    """Two 40×60 tiles. x: four 10×10 strokes, two per tile (400 px); y: two 5×10 strokes, one per
    tile (exactly MIN_HELD_OUT_PIXELS together); z: one 30-px stroke (never held back)."""
    rng = np.random.default_rng(3)
    a = np.zeros((40, 60), np.uint8)
    b = np.zeros((40, 60), np.uint8)
    a[0:10, 0:10] = 1
    a[20:30, 0:10] = 1
    b[0:10, 20:30] = 1
    b[20:30, 20:30] = 1
    a[0:5, 40:50] = 2
    b[30:35, 40:50] = 2
    a[35:38, 20:30] = 3
    return [(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8), a),
            (rng.integers(0, 255, (40, 60, 3), dtype=np.uint8), b)]


def test_folds_plan_counts_every_stroke_once_and_names_the_classes_it_cannot_score():
    samples = _samples()
    plan = plan_folds(_segmenter(), samples, folds=2, seed=0)
    assert MIN_HELD_OUT_PIXELS == 100
    assert plan.per_class.tolist() == [2 * 40 * 60 - 530, 400, 100, 30]
    assert plan.held_per_class[1:].tolist() == [400, 100, 0]  # index 0 unused
    assert plan.scored == ["x", "y"]  # y's 100 held-back pixels are just enough
    assert plan.too_few == {"z": 0}
    for (_, m), (train, held), f in zip(samples, plan.splits, plan.folds):
        assert train.dtype == np.uint8 and held.dtype == np.uint8
        assert np.array_equal(held, np.where(f > 0, m, 0)) and np.array_equal(train, np.where(f > 0, 0, m))
        assert np.array_equal(train, np.where(m == 3, 3, 0))  # only z, never held back, trains in every fold
        assert set(np.unique(f[m == 1]).tolist()) <= {1, 2}
    # each fold holds back strokes of x and of y, and leaves some of each to train on
    folds = np.concatenate([f[m > 0] for (_, m), f in zip(samples, plan.folds)])
    labels = np.concatenate([m[m > 0] for _, m in samples])
    for fold in (1, 2):
        assert set(labels[folds == fold].tolist()) == {1, 2}


def test_one_split_plan_counts_what_it_holds_back():
    samples = _samples()
    plan = plan_holdout(_segmenter(), samples, val_fraction=0.5, seed=0)
    held = sum(np.bincount(h.ravel(), minlength=4) for _, h in plan.splits)
    assert plan.held_per_class.tolist() == held.tolist()
    assert plan.held_per_class[1] == 200  # half of x's four strokes (and at least 100 px)
    assert plan.held_per_class[2] == 50  # one of y's two strokes: at most half of y
    assert plan.scored == ["x"] and plan.too_few == {"y": 50, "z": 0}
    assert plan.folds is None
    for (_, m), (train, h) in zip(samples, plan.splits):
        assert np.array_equal(train + h, m) and not ((train > 0) & (h > 0)).any()


@pytest.mark.parametrize("plan", ["folds", "split"])
def test_the_same_seed_holds_back_the_same_strokes(plan):
    samples = _samples()

    def run(seed):
        if plan == "folds":
            return np.concatenate([f.ravel() for f in plan_folds(_segmenter(), samples, 2, seed).folds])
        return np.concatenate([h.ravel() for _, h in plan_holdout(_segmenter(), samples, 0.5, seed).splits])

    first = run(0)
    assert all(np.array_equal(first, run(0)) for _ in range(3))
    assert any(not np.array_equal(first, run(s)) for s in range(1, 8))


def test_strokes_a_model_was_trained_on_are_found_again_and_kept_out_unless_asked():
    samples = _samples()
    rgb, a = samples[0]
    lab_first = np.zeros_like(a, bool)
    lab_first[0:10, 0:10] = True
    sig = stroke_signature(rgb, lab_first, 1)
    seg = _segmenter([sig])
    assert trained_strokes(seg) == {sig}
    assert trained_strokes(_segmenter()) == set()
    maps = seen_stroke_maps(samples, 3, {sig})
    assert np.array_equal(maps[0], lab_first) and not maps[1].any()
    kept_out = plan_folds(seg, samples, 2, seed=0)
    assert not kept_out.folds[0][lab_first].any() and kept_out.held_per_class[1] == 300
    folded = plan_folds(seg, samples, 2, seed=0, include_seen=True)
    assert (folded.folds[0][lab_first] > 0).all() and folded.held_per_class[1] == 400
    split = plan_holdout(seg, samples, 0.9, seed=0)
    assert not split.splits[0][1][lab_first].any()


def test_a_stroke_is_its_8_connected_piece_of_one_class_in_any_class():
    """Two squares touching at a corner are one stroke (8-connected); the last class counts; a
    single-pixel stroke is a stroke."""
    rgb = np.random.default_rng(0).integers(0, 255, (12, 12, 3), dtype=np.uint8)
    m = np.zeros((12, 12), np.uint8)
    m[0:2, 0:2] = 1
    m[2:4, 2:4] = 1  # corner to corner with the first: one stroke
    m[8, 8] = 3  # one pixel of the last class
    m[10:12, 0:3] = 3
    whole = m == 1
    sigs = {stroke_signature(rgb, whole, 1), stroke_signature(rgb, m == 3, 3)}
    single = np.zeros_like(whole)
    single[8, 8] = True
    sigs_each = {stroke_signature(rgb, whole, 1), stroke_signature(rgb, single, 3),
                 stroke_signature(rgb, (m == 3) & ~single, 3)}
    assert set(all_stroke_signatures([(rgb, m)], 3)) == sigs_each
    assert len(all_stroke_signatures([(rgb, m), (rgb, m)], 3)) == 3  # the same strokes twice: once
    hit = seen_stroke_maps([(rgb, m)], 3, {stroke_signature(rgb, whole, 1), stroke_signature(rgb, single, 3)})[0]
    assert np.array_equal(hit, whole | single)
    assert not seen_stroke_maps([(rgb, m)], 3, sigs - sigs_each)[0].any()  # two strokes together are none
    counts = stroke_counts([m], [m], [m], 3)
    assert sorted(counts[0].tolist()) == [1, 3, 3]  # the corner-joined squares are one stroke


def test_a_stroke_signature_is_its_class_shape_and_pixels():
    rgb = np.random.default_rng(1).integers(0, 255, (10, 10, 3), dtype=np.uint8)
    s = np.zeros((10, 10), bool)
    s[2:5, 3:7] = True
    sig = stroke_signature(rgb, s, 2)
    assert sig == stroke_signature(rgb.copy(), s.copy(), 2) and len(sig) == 16
    other = rgb.copy()
    other[3, 4] ^= 1
    taller = s.copy()
    taller[5, 3] = True
    wider = s.copy()
    wider[2, 7] = True
    moved = np.roll(s, 1, axis=0)
    assert len({sig, stroke_signature(rgb, s, 3), stroke_signature(other, s, 2), stroke_signature(rgb, taller, 2),
                stroke_signature(rgb, wider, 2), stroke_signature(rgb, moved, 2)}) == 6


def _with_a_seen_stroke():
    """The masks and images of :func:`_samples`, its first stroke (class 1, top left) and that
    stroke's signature as a model trained on it records it."""
    samples = _samples()
    masks, images = [m for _, m in samples], [r for r, _ in samples]
    lab_first = np.zeros_like(masks[0], bool)
    lab_first[0:10, 0:10] = True
    return masks, images, lab_first, {stroke_signature(images[0], lab_first, 1)}


def test_fold_and_split_respect_the_strokes_of_the_images_they_are_given():
    masks, images, lab_first, seen = _with_a_seen_stroke()
    f = fold_strokes(masks, 3, 2, np.random.default_rng(0), images=images, seen=seen)
    assert not f[0][lab_first].any()
    # without the images the signatures cannot be checked: every stroke is folded
    f = fold_strokes(masks, 3, 2, np.random.default_rng(0), seen=seen)
    assert (f[0][lab_first] > 0).all()
    (tr, va), _ = split_holdout_by_stroke(masks, 3, 0.9, np.random.default_rng(0), images=images, seen=seen)
    assert not va[lab_first].any()


def test_right_kept_per_label_over_several_masks():
    m1 = np.array([[1, 1, 2, 2, 0, 0]])
    o1 = np.array([[1, 2, 2, 2, 1, 0]])  # unverified pixels say nothing, whatever the model said there
    n1 = np.array([[1, 1, 1, 2, 2, 0]])
    m2 = np.array([[2, 2, 1]])
    o2 = np.array([[2, 0, 1]])
    n2 = np.array([[0, 2, 1]])
    # label 1: old right on 1 + 1, still right 1 + 1, new right on 2 + 1; label 2: 2 + 1, 1 + 0, 1 + 1
    assert right_kept([o1, o2], [n1, n2], [m1, m2]) == {1: (2, 2, 3), 2: (3, 1, 2)}
    assert right_kept([o1], [n1], [np.zeros_like(m1)]) == {}


def _squares(sizes, shape=(64, 64)):
    """A mask with one square-ish stroke of label 1 per size (pixels), laid out apart."""
    m = np.zeros(shape, np.uint8)
    y = 0
    for px in sizes:
        w = 10
        h = px // w
        m[y:y + h, 0:w] = 1
        if px % w:
            m[y + h, 0:px % w] = 1
        y += h + 2
    return m


@pytest.mark.parametrize("seed", range(6))
def test_one_split_holds_back_whole_8_connected_strokes(seed):
    m = np.zeros((30, 30), np.uint8)
    m[0:5, 0:5] = 1
    m[5:10, 5:10] = 1  # corner to corner: one stroke
    m[20:25, 20:25] = 1
    m[0:5, 20:25] = 1
    (tr, va), = split_holdout_by_stroke([m], 1, 0.5, np.random.default_rng(seed))
    assert va[0:5, 0:5].all() == va[5:10, 5:10].all() and va[0:5, 0:5].any() == va[5:10, 5:10].any()
    assert tr.dtype == np.uint8 and va.dtype == np.uint8
    f, = fold_strokes([m], 1, 3, np.random.default_rng(seed))
    assert len(np.unique(f[0:10, 0:10][m[0:10, 0:10] > 0])) == 1


def test_nothing_is_held_back_at_fraction_zero():
    (tr, va), = split_holdout_by_stroke([_squares([100, 100, 100])], 1, 0.0, np.random.default_rng(0))
    assert not va.any()


@pytest.mark.parametrize("seed", range(8))
def test_at_most_half_of_a_class_is_held_back(seed):
    """Strokes of 100 and 300 px: holding back the larger would leave less than half to train on,
    so the smaller one is held back, whichever comes first."""
    (tr, va), = split_holdout_by_stroke([_squares([100, 300])], 1, 0.5, np.random.default_rng(seed))
    assert int((va == 1).sum()) == 100


@pytest.mark.parametrize("seed", range(6))
def test_the_split_stops_at_the_fraction_once_enough_pixels_are_held(seed):
    """Four 100-px strokes at fraction 0.25: one stroke (100 px, exactly MIN_HELD_OUT_PIXELS)."""
    (tr, va), = split_holdout_by_stroke([_squares([100] * 4)], 1, 0.25, np.random.default_rng(seed))
    assert int((va == 1).sum()) == 100


def test_beside_strokes_the_old_model_saw_one_stroke_may_be_more_than_half():
    """A 300-px stroke beside a 1-px one the old model trained on: the seen one trains it anyway,
    so the large one is held back (the half rule protects what is left to train on)."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    m = _squares([300])
    m[60, 60] = 1
    dot = np.zeros_like(m, bool)
    dot[60, 60] = True
    seen = {stroke_signature(rgb, dot, 1)}
    (tr, va), = split_holdout_by_stroke([m], 1, 0.5, np.random.default_rng(0), images=[rgb], seen=seen)
    assert int((va == 1).sum()) == 300 and tr[60, 60] == 1


def test_stroke_counts_of_nothing_and_of_glass_under_a_stroke():
    classes, old, new = stroke_counts([np.zeros((4, 4), np.uint8)], [np.zeros((4, 4), np.uint8)],
                                      [np.zeros((4, 4), np.uint8)], 3)
    assert classes.shape == (0,) and old.shape == (0, 4) and new.shape == (0, 4)
    assert old.dtype == np.int64 and new.dtype == np.int64
    m = np.zeros((4, 4), np.uint8)
    m[:2, :2] = 2
    o = np.zeros_like(m)  # the old model saw glass there
    classes, old, new = stroke_counts([o], [m], [m], 3)
    assert old.tolist() == [[4, 0, 0, 0]] and new.tolist() == [[0, 0, 4, 0]]
    n = m.copy()
    n[0, 0] = 0  # the new model sees glass on one pixel of it
    classes, old, new = stroke_counts([m], [n], [m], 3)
    assert old.tolist() == [[0, 0, 4, 0]] and new.tolist() == [[1, 0, 3, 0]]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("size, strokes_held", [(50, 2), (25, 4)])
def test_the_split_holds_back_the_fraction_of_strokes_and_at_least_min_pixels_no_more(seed, size, strokes_held):
    """Eight strokes at fraction 0.25: two strokes are the fraction; of 50 px they hold
    MIN_HELD_OUT_PIXELS (100) and the split stops there; of 25 px it takes four to reach 100."""
    (tr, va), = split_holdout_by_stroke([_squares([size] * 8)], 1, 0.25, np.random.default_rng(seed))
    assert int((va == 1).sum()) == MIN_HELD_OUT_PIXELS == strokes_held * size
    assert int((tr == 1).sum()) == 8 * size - strokes_held * size


@pytest.mark.parametrize("seed", range(6))
def test_half_a_class_is_the_sum_of_its_held_back_strokes(seed):
    """Four 100-px strokes at fraction 1: two (200 px, half of 400) are held back; a third would
    leave less than half to train on."""
    (tr, va), = split_holdout_by_stroke([_squares([100] * 4)], 1, 1.0, np.random.default_rng(seed))
    assert int((va == 1).sum()) == 200 and int((tr == 1).sum()) == 200


def test_without_the_images_seen_strokes_cannot_be_told_and_the_split_is_the_plain_one():
    masks, images, lab_first, seen = _with_a_seen_stroke()
    plain = split_holdout_by_stroke(masks, 3, 0.5, np.random.default_rng(4))
    blind = split_holdout_by_stroke(masks, 3, 0.5, np.random.default_rng(4), seen=seen)
    for (tr, va), (tr2, va2) in zip(plain, blind):
        assert np.array_equal(tr, tr2) and np.array_equal(va, va2)


def test_a_stroke_signature_is_the_same_whatever_crop_it_was_read_in():
    """A model records the signatures of its strokes read in one crop; the next run reads the same
    strokes in another (a larger view, another offset) and must find them again."""
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    m = np.zeros((40, 50), np.uint8)
    m[20:26, 30:37] = 2
    m[26, 30] = 2
    m[5:8, 5:9] = 1
    whole = stroke_signature(rgb, m == 2, 2)
    for y, x in [(3, 4), (12, 25), (20, 30)]:
        crop_rgb, crop_m = rgb[y:, x:], m[y:, x:]
        assert stroke_signature(crop_rgb, crop_m == 2, 2) == whole
    assert stroke_signature(rgb[15:30, 28:], m[15:30, 28:] == 2, 2) == whole
    assert whole in all_stroke_signatures([(rgb[10:, 20:], m[10:, 20:])], 2)
    assert set(all_stroke_signatures([(rgb[10:, 20:], m[10:, 20:])], 2)) < set(all_stroke_signatures([(rgb, m)], 2))


def test_a_stroke_signature_is_what_earlier_versions_recorded():
    """Signatures are stored in a model's provenance: the same stroke must give the same text in
    every later version and on every platform, or a model's training strokes are held back again."""
    rgb = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    s = np.zeros((6, 8), bool)
    s[1:3, 2:5] = True
    s[3, 2] = True
    assert stroke_signature(rgb, s, 2) == "93020b302c4cf55b"
