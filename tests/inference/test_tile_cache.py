"""The tile cache: a panned view runs only the lattice tiles it adds, and gets the labels a run
without the cache gives; another model (fine-tuned, rolled back) never takes a tile of another."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dfa.inference import Runtime, Tiling, segment
from napari_dfa.inference.tile_cache import TileCache
from napari_dfa.model import load_model
from napari_dfa.slide import open_slide
from napari_dfa._sample_data import sample_slide_path

TILE, OVERLAP = 256, 32  # a small explicit lattice: many tiles on a small image, quick on a CPU


@pytest.fixture(scope="module")
def rgb():
    """1200×1100 pixels of the sample slide (tissue), as a numpy image."""
    with open_slide(sample_slide_path()) as slide:
        return np.asarray(slide.read_region(0, (1500, 1400, 1200, 1100)))


def run(rgb, model, region, cache):
    return segment(rgb, model, region=region, tiling=Tiling(tile=TILE, overlap=OVERLAP, tissue_mask=False),
                   runtime=Runtime(device="cpu", tile_cache=cache))


def test_a_panned_view_reuses_tiles_and_gets_the_labels_of_a_fresh_run(demo, rgb, one_torch_thread):
    whole = segment(rgb, demo, tiling=Tiling(tile=TILE, overlap=OVERLAP, tissue_mask=False),
                    runtime=Runtime(device="cpu")).labels
    cache = TileCache()
    a = (100, 150, 600, 500)
    first = run(rgb, demo, a, cache)
    assert first.tiles_cached == 0 and len(cache) == first.tiles_total
    b = (100 + 300, 150 + 250, 600, 500)  # panned by half the view, down and right
    second = run(rgb, demo, b, cache)
    assert 0 < second.tiles_cached < second.tiles_total  # the shared tiles came from the cache
    for res, (y, x, h, w) in ((first, a), (second, b)):
        assert np.array_equal(np.asarray(res.labels), whole[y:y + h, x:x + w])
    # the whole image from the cache where it has tiles, the rest computed: the same labels
    again = run(rgb, demo, None, cache)
    assert again.tiles_cached >= second.tiles_total
    assert np.array_equal(np.asarray(again.labels), whole)


def test_another_model_takes_no_tile_of_the_first(demo, rgb, one_torch_thread):
    cache = TileCache()
    region = (0, 0, 500, 500)
    run(rgb, demo, region, cache)
    other = load_model("demo")
    with torch.no_grad():
        other.model.decoder.class_tokens.weight.add_(0.5)  # in place, as an optimiser step writes
    res = run(rgb, other, region, cache)
    assert res.tiles_cached == 0
    fresh = segment(rgb, other, region=region, tiling=Tiling(tile=TILE, overlap=OVERLAP, tissue_mask=False),
                    runtime=Runtime(device="cpu"))
    assert np.array_equal(np.asarray(res.labels), np.asarray(fresh.labels))
    assert run(rgb, demo, region, cache).tiles_cached == res.tiles_total  # the first model's are kept


def test_the_cache_keeps_to_its_budget_and_dense_outputs_bypass_it(demo, rgb, one_torch_thread):
    cache = TileCache(max_bytes=3 << 20)  # ~4 tiles of 256² with their strips
    run(rgb, demo, None, cache)
    assert 0 < cache.nbytes <= 3 << 20 and len(cache) < 25
    res = segment(rgb, demo, region=(0, 0, 300, 300), tiling=Tiling(tile=TILE, overlap=OVERLAP, tissue_mask=False),
                  runtime=Runtime(device="cpu", tile_cache=cache), outputs=("labels", "probabilities"))
    assert res.tiles_cached == 0 and res.probabilities is not None
