"""Same pixel, same label: the tile lattice belongs to the level, and the fitted lattice's numbers.

The DFA decoder's class tokens attend over the whole forward pass, so a pixel's label depends on
the tile it is computed in. ``segment`` therefore places tiles on a lattice fixed by the level
(not by the region asked for): any region gets the same tiles over a pixel, hence the same label.
What the model does when the tiles really move (the image cropped by half a tile) is measured too,
with a bound, so that a change that makes the model more tile-dependent shows.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from napari_dfa import synth
from napari_dfa.inference import Runtime, Tiling, segment
from napari_dfa.inference.tiling import MIN_OVERLAP, OVERLAP_BUDGET, TileGrid, fit_axis, taper, tile_starts
from napari_dfa.slide import open_slide


@pytest.fixture(scope="module")
def slide_rgb(tmp_path_factory):
    """Level 0 of a 2048² synthetic SVS-style slide (tissue and glass), read back from the file."""
    path, _ = synth.write_slide(tmp_path_factory.mktemp("slide") / "consistency.svs", size=(2048, 2048), seed=3)
    with open_slide(path) as slide:
        return np.asarray(slide.levels[0])


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels with the same label, over the pixels either calls tissue (glass that both
    call glass is no evidence)."""
    either = (a > 0) | (b > 0)
    return float((a == b)[either].mean())


def test_views_offset_by_half_a_tile_get_the_same_labels(demo, slide_rgb):
    whole = segment(slide_rgb, demo, runtime=Runtime(device="cpu"))  # defaults: the fitted lattice of the level
    assert whole.tile_shape == (1056, 1056) and whole.overlap == (64, 64) and whole.tiles_total == 4
    h = whole.tile_shape[0] // 2
    a = segment(slide_rgb, demo, region=(64, 64, 1344, 1344), runtime=Runtime(device="cpu")).labels
    b = segment(slide_rgb, demo, region=(64 + h, 64 + h, 1344, 1344), runtime=Runtime(device="cpu")).labels
    # Measured 1.0000 for both (the issue asked >= 0.98); float noise of another batch composition
    # may flip a near-tie, hence not exactly 1.
    assert agreement(a[h:, h:], b[:-h, :-h]) >= 0.999
    assert agreement(a, whole.labels[64:1408, 64:1408]) >= 0.999


def test_tilings_offset_by_half_a_tile_agree_within_the_models_tile_dependence(demo, slide_rgb):
    """The model's own dependence on tile context: the image cropped by half a tile, so that the
    lattice moves. Measured on this slide with the bundled model: 0.994 with the default's 1056² tiles
    (overlap 64), 0.959 with the former default 512/64 (0.992 and 0.977 on the sample slide). The
    demo model before it: 0.984 and 0.883 (0.955 and 0.853), and 0.959 and 0.802 before the
    GroupNorms left glass out of their statistics. Larger tiles give the class tokens more context:
    more consistent, and more accurate."""

    def tilings(tile: int, overlap: int) -> float:
        h = tile // 2
        a = segment(slide_rgb[:-h, :-h], demo, tiling=Tiling(tile=tile, overlap=overlap),
                    runtime=Runtime(device="cpu")).labels
        b = segment(slide_rgb[h:, h:], demo, tiling=Tiling(tile=tile, overlap=overlap),
                    runtime=Runtime(device="cpu")).labels
        return agreement(a[h:, h:], b[:-h, :-h])

    default = tilings(1056, 64)
    former = tilings(512, 64)
    assert default >= 0.98, default  # the bound
    assert default >= former + 0.02, (default, former)


@pytest.mark.parametrize("length", [33, 700, 1024, 1025, 1100, 1500, 1536, 2048, 2500, 3000, 4096, 5000, 8192,
                                    10000, 33333, 100_000])
def test_fitted_lattice_covers_the_level_with_little_overlap(length):
    tile, starts = fit_axis(length)
    assert tile % 32 == 0 and starts[0] == 0 and np.all(np.diff(starts) > 0)
    assert starts.dtype.kind == "i"  # pixel offsets: they index reads and cells
    if len(starts) == 1:
        assert tile >= length and tile - length < 32  # one tile, padded to the input multiple
        return
    assert starts[-1] + tile == length  # the last tile ends on the level's border
    assert np.all(starts[:-1] + tile - starts[1:] >= MIN_OVERLAP)  # neighbours share enough to blend
    # Computed pixels (by area) within the budget: 512/64 computed 25 tiles' worth for 16 on 2048².
    assert (len(starts) * tile / length) ** 2 <= 1 + OVERLAP_BUDGET + 1e-9
    assert 0.5 * 1024 <= tile <= 1.5 * 1024


def test_the_fitted_lattice_at_its_edges():
    # two candidates as far from the target: 2 tiles of 1216 and 3 of 832 (1024 ± 192) on 2380 px;
    # the larger tile wins (fewer passes), as with 1343 px: one tile of 1344, not 2 of 704
    tile, starts = fit_axis(2380)
    assert tile == 1216 and starts.tolist() == [0, 1164]
    tile, starts = fit_axis(1343)
    assert tile == 1344 and starts.tolist() == [0]
    # a lattice computing exactly the budget is within it: budget 3 (by area) is 2x per axis, and
    # 3 tiles of 640 on 960 px compute 1920 = 2 x 960
    tile, starts = fit_axis(960, target=640, min_overlap=480, budget=3.0)
    assert tile == 640 and starts.tolist() == [0, 160, 320]
    # none within the budget (0: even one tile rounds 1000 up to 1024): the least computed
    tile, starts = fit_axis(1000, target=512, budget=0.0)
    assert tile == 1024 and starts.tolist() == [0] and starts.dtype.kind == "i"


@pytest.mark.parametrize("length, tile, stride, want", [
    (100, 256, 192, [0]), (256, 256, 192, [0]),  # fits one tile: a single start
    (257, 256, 192, [0, 1]),  # the last tile pulled back to end on the border
    (448, 256, 192, [0, 192]), (449, 256, 192, [0, 192, 193]),
    (1000, 256, 256, [0, 256, 512, 744]), (768, 256, 256, [0, 256, 512]),
    (10, 3, 4, [0, 4, 7]),
])
def test_explicit_tile_starts_step_by_the_stride_and_end_on_the_border(length, tile, stride, want):
    starts = tile_starts(length, tile, stride)
    assert starts.tolist() == want and starts.dtype == np.int64


@pytest.mark.parametrize("n, overlap", [(64, 16), (40, 7), (10, 32), (1, 1)])
def test_the_taper_ramps_by_raised_cosine_only_where_a_neighbour_is(n, overlap):
    o = min(overlap, n)
    ramp = np.sin(0.5 * math.pi * (np.arange(o) + 0.5) / o) ** 2
    none = taper(n, overlap, False, False)
    assert none.dtype == np.float32 and none.shape == (n,) and (none == 1).all()
    start, end, both = taper(n, overlap, True, False), taper(n, overlap, False, True), taper(n, overlap, True, True)
    np.testing.assert_allclose(start[:o], ramp, rtol=1e-6)
    assert (start[o:] == 1).all()
    np.testing.assert_allclose(end[n - o:], ramp[::-1], rtol=1e-6)
    assert (end[:n - o] == 1).all()
    np.testing.assert_allclose(both, np.minimum(start, end), rtol=1e-6)
    assert (both > 0).all()  # normalising never divides by zero
    # neighbours' ramps over a shared band add up to 1 (sin² + cos²): seams blend smoothly
    np.testing.assert_allclose(end[n - o:] + start[:o], 1.0, rtol=1e-6)
    assert (taper(n, 0, True, True) == 1).all() and (taper(n, -3, True, True) == 1).all()


def test_a_region_gets_the_lattice_tiles_that_touch_it():
    level = TileGrid(height=4096, width=4096)
    region = TileGrid(height=700, width=300, origin=(1000, 2500), extent=(4096, 4096))
    assert region.tile_shape == level.tile_shape == (1056, 1056)
    lat = level.ys.starts
    ys = [int(s) for s in lat if s < 1000 + 700 and s + 1056 > 1000]
    xs = [int(s) for s in lat if s < 2500 + 300 and s + 1056 > 2500]
    assert [int(s) + 1000 for s in region.ys.starts] == ys
    assert [int(s) + 2500 for s in region.xs.starts] == xs
    # Reads stay inside the level; cells only cover the region.
    y, x, h, w = region.box()
    assert 1000 + y >= 0 and 2500 + x >= 0 and 1000 + y + h <= 4096 and 2500 + x + w <= 4096
    assert region.ys.bounds[0] == 0 and region.ys.bounds[-1] == 700
    # The same windows as the whole level's tiles (weights depend on the lattice, not the region).
    i = int(np.searchsorted(lat, ys[0]))
    np.testing.assert_array_equal(region.ys.window(0), level.ys.window(i))


def test_shared_bands_hold_exactly_the_cells_more_than_one_tile_covers():
    grid = TileGrid(height=900, width=1300, tile=256, overlap=64, origin=(40, 70), extent=(1200, 1500))
    counts = grid.cell_counts()
    for i in range(grid.rows):
        for j in range(grid.cols):
            y, x = int(grid.ys.starts[i]), int(grid.xs.starts[j])
            covered = np.zeros((256, 256), dtype=np.int8)  # 1: a cell only this tile covers, 2: shared
            for cy in grid.ys.cells_of(i):
                for cx in grid.xs.cells_of(j):
                    sy = slice(int(grid.ys.bounds[cy]) - y, int(grid.ys.bounds[cy + 1]) - y)
                    sx = slice(int(grid.xs.bounds[cx]) - x, int(grid.xs.bounds[cx + 1]) - x)
                    covered[sy, sx] = 1 if counts[cy, cx] == 1 else 2
            in_bands = np.zeros_like(covered, dtype=bool)
            for y0, y1, x0, x1 in grid.shared_bands(i, j):
                assert not in_bands[y0:y1, x0:x1].any()  # boxes do not overlap
                in_bands[y0:y1, x0:x1] = True
            np.testing.assert_array_equal(in_bands, covered == 2)


def test_explicit_tiles_keep_their_size_and_overlap():
    grid = TileGrid(height=768, width=768, tile=256, overlap=64)
    assert grid.tile_shape == (256, 256) and grid.overlaps == (64, 64)
    assert list(grid.ys.starts) == [0, 192, 384, 512]  # the last pulled back to the border
    assert grid.computed_pixels == 16 * 256 * 256
    assert math.isclose(grid.computed_pixels / 768**2, 16 / 9)


def test_labels_do_not_depend_on_how_many_threads_torch_has(demo):
    """The GUI leaves a core to the UI, the CLI uses them all, another machine has more: on a CPU
    each tile runs on one torch thread (several tiles at once), so the labels are the same. With
    torch's threads inside a pass, 10 pixels of the sample slide flipped between 1 and 2 threads."""
    import torch

    from napari_dfa._sample_data import sample_slide_path

    with open_slide(sample_slide_path()) as slide:
        rgb = np.asarray(slide.levels[0])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = segment(rgb, demo, runtime=Runtime(device="cpu")).labels
        torch.set_num_threads(2)
        two = segment(rgb, demo, runtime=Runtime(device="cpu")).labels
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before  # segment restored what it changed
    np.testing.assert_array_equal(one, two)


def test_torch_threads_are_restored_also_when_the_run_fails():
    """segment and predict set torch's (process-wide) thread count for a run: an error inside must
    not leave the GUI's or a caller's count changed."""
    import torch

    from napari_dfa.model.device import torch_threads

    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with torch_threads(target):
        assert torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError), torch_threads(target):
        raise ValueError("a broken slide")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_the_gui_runs_one_pass_per_core_with_the_labels_of_any_other_count(demo, slide_rgb, monkeypatch):
    """The widgets run one one-thread pass per core (torch's own pool stays a core short for the
    UI); how many run at once changes the time, never a label."""
    from napari_dfa.inference.background import GUI_THREADS_ENV, gui_tile_workers

    monkeypatch.delenv(GUI_THREADS_ENV, raising=False)
    assert gui_tile_workers() == (os.cpu_count() or 1)
    monkeypatch.setenv(GUI_THREADS_ENV, "1")
    assert gui_tile_workers() == 1
    one = segment(slide_rgb, demo, runtime=Runtime(device="cpu", tile_workers=1))
    three = segment(slide_rgb, demo, runtime=Runtime(device="cpu", tile_workers=3))
    assert one.tiles_total == 4
    np.testing.assert_array_equal(one.labels, three.labels)


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_glass_found_in_the_background_fails_in_the_callers_thread(demo, monkeypatch):
    """The glass is found beside the first passes; if that fails, segment's caller gets the error
    (from the blending, which asks for the glass again), not a traceback from a stray thread."""
    import threading

    from napari_dfa.inference import tissue

    rgb = np.full((1024, 1024, 3), 240, np.uint8)
    rgb[:, :400] = (150, 60, 140)  # tissue on the left, glass on the right
    calls = []

    def broken(*args, **kwargs):
        calls.append(threading.current_thread().name)
        raise MemoryError("no room for the glass")

    monkeypatch.setattr(tissue, "glass_from_tissue", broken)
    with pytest.raises(MemoryError, match="no room"):
        segment(rgb, demo, runtime=Runtime(device="cpu"))
    assert "napari-dfa-glass" in calls and len(calls) >= 2  # tried beside the passes, then again
