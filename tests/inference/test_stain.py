"""Matching a slide's stain to the model's training stain (model/stain.py, inference/stain.py):
another lab's slide segmented nearly as well as one in the training stain, the same labels whatever
the view, nothing recoloured unless asked, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from correction_fixtures import CASE_CONFIG, CASE_SEED, mean_dice

from napari_dfa import synth
from napari_dfa._sample_data import open_truth
from napari_dfa.cli import main
from napari_dfa.errors import ConfigError, DataError
from napari_dfa.inference import Runtime, segment
from napari_dfa.inference.stain import slide_stain_match
from napari_dfa.inference.tile_cache import TileCache
from napari_dfa.labels.store import LabelsStore
from napari_dfa.model import ModelConfig, Segmenter
from napari_dfa.model.stain import StainFit, StainMatch, training_stain
from napari_dfa.slide import open_slide

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The correction tests' case slide: the generator's tissue in a stain that strays four times
    as far as the demo model's training slides'."""
    folder = tmp_path_factory.mktemp("stain")
    path, truth_path = synth.write_slide(folder / "case.tif", CASE_CONFIG, size=(1024, 1024), seed=CASE_SEED, mpp=0.5)
    return path, np.asarray(open_truth(truth_path)[0])


def test_another_labs_slide_is_segmented_as_well_as_the_training_stain(demo, case):
    """Measured: mDice 0.877 as stored, 0.932 matched (the sample slide, in the training stain: 0.978)."""
    path, truth = case
    with open_slide(path) as slide:
        stored = segment(slide, demo, level=0).labels
        matched = segment(slide, demo, level=0, stain=True).labels
    assert mean_dice(truth, matched) >= 0.92
    assert mean_dice(truth, matched) > mean_dice(truth, stored) + 0.03


def test_the_match_is_the_slides_so_every_view_gets_the_same_labels(demo, case):
    path, _ = case
    with open_slide(path) as slide:
        match = slide_stain_match(slide, demo)
        # Fitted on the whole level: the same whatever region is segmented next.
        assert slide_stain_match(slide, demo).key == match.key
        whole = np.asarray(segment(slide, demo, level=0, stain=match).labels)
        view = np.asarray(segment(slide, demo, level=0, region=(300, 200, 512, 600), stain=match).labels)
    assert (view == whole[300:812, 200:800]).mean() >= 0.999


def test_the_training_stain_is_left_as_it_is(demo):
    """Tiles in the training stain, matched to it, keep their colours within a few levels of 255
    (measured: median 5, mean 4.2; each tile's stain strays a little from the training set's)."""
    tiles = [synth.generate_tile(synth.SynthConfig(), seed=(3000 + i,), size=256)[0] for i in range(8)]
    match = StainMatch(StainFit.fit(tiles), training_stain(demo))
    diff = np.abs(match(tiles[0]).astype(int) - tiles[0].astype(int))
    assert np.median(diff) <= 8 and diff.mean() <= 8, (np.median(diff), diff.mean())
    # White glass stays white.
    glass = np.full((8, 8, 3), 250, np.uint8)
    assert (match(glass) >= 245).all()


def test_stored_runs_and_cached_tiles_keep_the_stains_apart(demo, case, tmp_path):
    path, _ = case
    with open_slide(path) as slide:
        cache = TileCache()
        segment(slide, demo, level=0, region=(0, 0, 1024, 1024), runtime=Runtime(tile_cache=cache))
        matched = segment(slide, demo, level=0, region=(0, 0, 1024, 1024), runtime=Runtime(tile_cache=cache),
                          stain=True)
        assert matched.tiles_cached == 0  # recoloured pixels: no labels of the stored ones
        again = segment(slide, demo, level=0, region=(0, 0, 1024, 1024), runtime=Runtime(tile_cache=cache), stain=True)
        assert again.tiles_cached == again.tiles_total - again.tiles_skipped
        np.testing.assert_array_equal(np.asarray(again.labels), np.asarray(matched.labels))
        store = segment(slide, demo, level=0, out=tmp_path / "a.zarr", stain=True)
        assert LabelsStore.open(store.path).info["stain"]["target"] == training_stain(demo).as_dict()
        with pytest.raises(ConfigError, match="cannot resume"):  # a run without the match: not mixed in
            segment(slide, demo, level=0, out=tmp_path / "a.zarr", resume=True)


def test_predict_matches_the_stain_when_asked(case, tmp_path):
    path, _ = case
    out = tmp_path / "out"
    assert main(["predict", str(path), "--model", "demo", "--out", str(out), "--match-stain", "--level", "0"]) == 0
    (store,) = out.glob("*.zarr")
    assert LabelsStore.open(store).info["stain"]["target"]["vectors"]
    assert main(["predict", str(path), "--model", "demo", "--out", str(tmp_path / "plain"), "--level", "0"]) == 0
    assert all("stain" not in LabelsStore.open(p).info for p in (tmp_path / "plain").glob("*.zarr"))


def test_a_model_without_a_training_stain_says_so(case):
    path, _ = case
    seg = Segmenter.from_config(ModelConfig.from_preset("tiny", num_classes=5), frequencies=[0.2] * 5, mpp=0.5)
    with open_slide(path) as slide, pytest.raises(DataError, match="records no stain of its training data"):
        segment(slide, seg, level=0, stain=True)


def test_a_stain_is_checked_when_read():
    fit = StainFit.fit([synth.generate_tile(synth.SynthConfig(), seed=(7,), size=256)[0]])
    assert StainFit.from_dict(json.loads(json.dumps(fit.as_dict()))) == fit
    with pytest.raises(DataError, match="2×3"):
        StainFit.from_dict({"vectors": [[1, 0, 0]], "max_concentration": [1, 1]})
    with pytest.raises(DataError, match="cannot fit a stain"):
        StainFit.fit([np.full((64, 64, 3), 250, np.uint8)])  # glass only


def test_fine_tuning_trains_and_segments_again_on_the_matched_pixels(demo, case, tmp_path):
    """Labels from recoloured pixels are corrected, trained on and segmented again on the same
    recoloured pixels (what the Fine-tune widget does after Segment with the Stain box ticked)."""
    from correction_fixtures import paint_largest_errors

    from napari_dfa.corrections import CorrectionStore
    from napari_dfa.corrections.workflow import Resegment, finetune_on_corrections

    path, truth = case
    region = (0, 0, 512, 512)
    with open_slide(path) as slide:
        match = slide_stain_match(slide, demo)
        before = np.asarray(segment(slide, demo, level=0, region=region, stain=match).labels)
        painted = paint_largest_errors(truth[:512, :512], before)
        store = CorrectionStore.for_slide(slide.path, root=tmp_path / "corrections", class_names=demo.class_names)
        store.write(store.create_patch(level=0, region=region).key, (0, 0), painted)
        seen = []

        def read(level, box):
            seen.append(box)
            return match(slide.read_region(level, box))

        outcome = finetune_on_corrections(demo, store, read, steps=2, guard=False,
                                          resegment=Resegment(slide, 0, region, stain=match))
        again = segment(slide, outcome.candidate, level=0, region=region, stain=match).labels
    assert seen and outcome.kept
    np.testing.assert_array_equal(outcome.relabelled, np.asarray(again))
