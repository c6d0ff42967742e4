"""Corrections between two sessions (issue 23, cause 3): two processes painting into one slide's
correction store lose no stroke (a write lock, and writes that change only what their writer
changed), never start one patch twice; a store reopened with another class list keeps every
stroke's class by name, or refuses when a class with strokes is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_dfa.corrections import CorrectionStore
from napari_dfa.errors import DataError
from bcss_classes import NAMES

SIZE, STEP, R, MARGIN = 512, 32, 6, 24

# One napari window: it shows the patch as it read it, paints a disc per stroke into its own view
# and saves the stroke's bounding box from that view (as the recorder does), stale where the
# other window painted meanwhile; at the end it saves its whole layer once (a recorder's flush).
_WINDOW = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from napari_dfa.corrections import CorrectionStore
    path, label, parity, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    SIZE, STEP, R, M = %d, %d, %d, %d
    store = CorrectionStore(path)
    patch = store.create_patch(level=0, region=(0, 0, SIZE, SIZE))
    view = store.read(patch.key)
    yy, xx = np.mgrid[-R:R + 1, -R:R + 1]
    disc = yy ** 2 + xx ** 2 <= R * R
    open(start + f".ready{label}", "w").close()
    while not os.path.exists(start):
        time.sleep(0.001)
    cells = [(i, j) for i in range(SIZE // STEP) for j in range(SIZE // STEP) if (i + j) %% 2 == parity]
    np.random.default_rng(label).shuffle(cells)
    for i, j in cells:
        cy, cx = STEP // 2 + i * STEP, STEP // 2 + j * STEP
        view[cy - R:cy + R + 1, cx - R:cx + R + 1][disc] = label
        y0, x0 = max(0, cy - M), max(0, cx - M)
        store.write(patch.key, (y0, x0), view[y0:cy + M, x0:cx + M].copy())
    store.write(patch.key, (0, 0), view)
""" % (SIZE, STEP, R, MARGIN))


def _expected(parity: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    yy, xx = np.mgrid[-R:R + 1, -R:R + 1]
    disc = yy ** 2 + xx ** 2 <= R * R
    for i in range(SIZE // STEP):
        for j in range(SIZE // STEP):
            if (i + j) % 2 == parity:
                cy, cx = STEP // 2 + i * STEP, STEP // 2 + j * STEP
                mask[cy - R:cy + R + 1, cx - R:cx + R + 1] |= disc
    return mask


@pytest.mark.parametrize("labels", [(1, 2), (2, 3), (4, 5)])
def test_two_windows_painting_at_once_lose_no_stroke(tmp_path, labels):
    path = tmp_path / "slide-abc.zarr"
    store = CorrectionStore(path, class_names=NAMES)
    store.create_patch(level=0, region=(0, 0, SIZE, SIZE))  # both windows reopen the same patch
    start = str(tmp_path / "go")
    procs = [subprocess.Popen([sys.executable, "-c", _WINDOW, str(path), str(label), str(parity), start],
                              stderr=subprocess.PIPE, text=True)
             for parity, label in enumerate(labels)]
    while not all(os.path.exists(f"{start}.ready{label}") for label in labels):
        assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs]
    open(start, "w").close()  # both paint from now on
    for p in procs:
        assert p.wait(timeout=900) == 0, p.stderr.read()
    (patch,) = store.patches()
    data = store.read(patch.key)
    for parity, label in enumerate(labels):
        want = _expected(parity)
        lost = int((data[want] != label).sum())
        assert lost == 0, f"{lost} of {int(want.sum())} pixels of label {label} lost"
    assert set(np.unique(data)) == {0, *labels}


def test_a_stroke_erased_by_its_own_window_is_erased(tmp_path):
    store = CorrectionStore(tmp_path / "s.zarr", class_names=NAMES)
    patch = store.create_patch(level=0, region=(0, 0, 64, 64))
    mine = store.read(patch.key)
    other = CorrectionStore(tmp_path / "s.zarr")
    theirs = other.read(patch.key)
    mine[10:20, 10:20] = 2
    store.write(patch.key, (0, 0), mine)
    theirs[40:50, 40:50] = 3
    other.write(patch.key, (0, 0), theirs)  # its stale view of mine's square is not written back
    mine[10:20, 10:20] = 0  # mine erases its own stroke
    store.write(patch.key, (0, 0), mine)
    data = store.read(patch.key)
    assert (data[10:20, 10:20] == 0).all() and (data[40:50, 40:50] == 3).all()


def test_patches_started_at_once_get_their_own_keys(tmp_path):
    path = tmp_path / "s.zarr"
    CorrectionStore(path, class_names=NAMES)
    code = textwrap.dedent("""
        import sys
        from napari_dfa.corrections import CorrectionStore
        store = CorrectionStore(sys.argv[1])
        base = int(sys.argv[2])
        for i in range(25):
            p = store.create_patch(level=0, region=(base + i, 0, 8, 8))
            store.write(p.key, (0, 0), __import__("numpy").full((8, 8), 1 + base // 1000, "uint8"))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(base)], stderr=subprocess.PIPE, text=True)
             for base in (0, 1000, 2000)]
    for p in procs:
        assert p.wait(timeout=900) == 0, p.stderr.read()
    store = CorrectionStore(path)
    patches = store.patches()
    assert len(patches) == 75 and len({p.key for p in patches}) == 75
    for p in patches:  # each patch holds its own writer's label
        assert (store.read(p.key) == 1 + p.region[0] // 1000).all()


# --- bound to its class list --------------------------------------------------------------------------
def _painted(tmp_path):
    store = CorrectionStore(tmp_path / "s.zarr", class_names=NAMES)
    patch = store.create_patch(level=0, region=(0, 0, 10, 50))
    block = np.zeros((10, 50), np.uint8)
    for label in range(1, 6):
        block[:, (label - 1) * 10:(label - 1) * 10 + label] = label  # class k: k columns
    store.write(patch.key, (0, 0), block)
    return store.counts_by_name(), tmp_path / "s.zarr"


@settings(max_examples=25, deadline=None)
@given(order=st.permutations(NAMES), extra=st.lists(st.sampled_from(["fat", "mucin", "Fibrosis"]), unique=True))
def test_reopening_with_another_class_list_keeps_every_strokes_class(tmp_path_factory, order, extra):
    before, path = _painted(tmp_path_factory.mktemp("bind"))
    names = [*order[:2], *extra, *order[2:]]
    store = CorrectionStore(path, class_names=names)
    assert store.class_names == names
    assert {n: px for n, px in store.counts_by_name().items() if px} == before


@pytest.mark.parametrize("names", [NAMES[1:], ["Tumour", "stroma"], ["a", "b", "c", "d", "e"]])
def test_a_class_list_without_a_class_that_has_strokes_is_refused(tmp_path, names):
    before, path = _painted(tmp_path)
    with pytest.raises(DataError, match="holds corrections of"):
        CorrectionStore(path, class_names=names)
    store = CorrectionStore(path)
    assert store.class_names == NAMES and store.counts_by_name() == before


def test_case_only_changes_and_empty_stores_take_the_list_as_given(tmp_path):
    before, path = _painted(tmp_path)
    store = CorrectionStore(path, class_names=[n.upper() for n in NAMES])
    assert store.class_names == [n.upper() for n in NAMES]
    assert store.counts_by_name() == {n.upper(): px for n, px in before.items()}
    empty = CorrectionStore(tmp_path / "empty.zarr", class_names=NAMES)
    empty.create_patch(level=0, region=(0, 0, 4, 4))
    assert CorrectionStore(tmp_path / "empty.zarr", class_names=["x"]).class_names == ["x"]


def test_a_stroke_saved_with_the_list_it_was_painted_with_lands_by_name(tmp_path):
    """Window A's class list is renumbered by window B (a class inserted); A's next stroke, saved
    with the list A painted with, is still tumour."""
    store = CorrectionStore(tmp_path / "s.zarr", class_names=NAMES)
    patch = store.create_patch(level=0, region=(0, 0, 8, 8))
    other = CorrectionStore(tmp_path / "s.zarr")
    other.remap_classes(["fat", *NAMES])
    store.write(patch.key, (0, 0), np.full((2, 2), 2, np.uint8), class_names=NAMES)  # 2 = tumour for A
    assert store.counts_by_name() == {"tumour": 4}
    with pytest.raises(DataError, match="no longer in the store's class list"):
        other.remap_classes(NAMES[:1] + ["fat"])
        store.write(patch.key, (4, 4), np.full((2, 2), 3, np.uint8), class_names=NAMES)  # stroma, now gone
