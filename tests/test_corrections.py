"""The on-disk correction store: write-through patches, reopening by slide path, QuPath import."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

from napari_dfa.corrections import CorrectionStore, read_geojson_polygons
from napari_dfa.paths import corrections_store_path as store_path_for
from napari_dfa.errors import DataError

NAMES = ["inflammatory", "tumour", "stroma", "other", "necrosis"]


@pytest.fixture
def slide_file(tmp_path):
    path = tmp_path / "case 01.ome.tif"
    path.write_bytes(b"not read by the store")
    return path


def test_store_is_reopened_by_slide_path(tmp_path, slide_file):
    store = CorrectionStore.for_slide(slide_file, root=tmp_path / "c", class_names=NAMES)
    patch = store.create_patch(level=1, region=(100, 200, 300, 400), downsample=2.0)
    block = np.zeros((50, 60), np.uint8)
    block[10:20, 5:25] = 2
    store.write(patch.key, (30, 40), block)

    again = CorrectionStore.for_slide(str(slide_file), root=tmp_path / "c")
    assert again.path == store.path
    assert again.class_names == NAMES
    assert again.slide_path == str(slide_file)
    (p,) = again.patches()
    assert (p.level, p.region, p.downsample) == (1, (100, 200, 300, 400), 2.0)
    assert p.translate == (200.0, 400.0)
    labels = again.read(p.key)
    assert labels.shape == (300, 400)
    assert labels[40:50, 45:65].tolist() == (np.full((10, 20), 2)).tolist()
    assert again.counts() == {2: 200}
    # Same region again: the same patch, so painting resumes where it stopped.
    assert again.create_patch(level=1, region=(100, 200, 300, 400), downsample=2.0).key == p.key
    # Another slide gets another store.
    assert store_path_for(tmp_path / "other.svs", root=tmp_path / "c") != store.path


def test_bad_writes_name_the_store(tmp_path, slide_file):
    store = CorrectionStore.for_slide(slide_file, root=tmp_path, class_names=NAMES)
    patch = store.create_patch(level=0, region=(0, 0, 10, 10))
    with pytest.raises(DataError, match="label 9 is not a class"):
        store.write(patch.key, (0, 0), np.full((2, 2), 9, np.uint8))
    with pytest.raises(DataError, match="outside patch"):
        store.write(patch.key, (9, 9), np.ones((2, 2), np.uint8))
    with pytest.raises(DataError, match="no correction patch"):
        store.read("nope")
    with pytest.raises(DataError, match="no correction store"):
        CorrectionStore(tmp_path / "missing.zarr", create=False)


def test_samples_crop_to_corrected_pixels_with_context(tmp_path, slide_file):
    store = CorrectionStore.for_slide(slide_file, root=tmp_path, class_names=NAMES)
    empty = store.create_patch(level=0, region=(0, 0, 64, 64))
    patch = store.create_patch(level=0, region=(1000, 2000, 512, 512))
    block = np.full((10, 10), 3, np.uint8)
    store.write(patch.key, (200, 300), block)
    calls = []

    def read_rgb(level, region):
        calls.append((level, region))
        return np.full((region[2], region[3], 3), 128, np.uint8)

    (rgb, mask), = store.samples(read_rgb)
    assert calls == [(0, (1000 + 136, 2000 + 236, 138, 138))]
    assert rgb.shape == (138, 138, 3) and mask.shape == (138, 138)
    assert (mask == 3).sum() == 100 and set(np.unique(mask)) == {0, 3}


def _qupath_feature(name, rings, color=(230, 40, 40)):
    return {"type": "Feature", "id": str(uuid.uuid4()),
            "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {"objectType": "annotation",
                           "classification": {"name": name, "color": list(color)}}}


def test_qupath_geojson_is_rasterised_on_the_level_grid(tmp_path, slide_file):
    square = [[[100, 200], [300, 200], [300, 400], [100, 400], [100, 200]]]
    hole = [[140, 240], [180, 240], [180, 280], [140, 280], [140, 240]]
    doc = {"type": "FeatureCollection", "features": [
        _qupath_feature("Stroma", [square[0], hole]),
        _qupath_feature("tumour", [[[200, 300], [260, 300], [260, 360], [200, 360], [200, 300]]]),
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square},
         "properties": {"objectType": "annotation"}},  # unclassified: skipped
    ]}
    gj = tmp_path / "qupath.geojson"
    gj.write_text(json.dumps(doc))
    store = CorrectionStore.for_slide(slide_file, root=tmp_path, class_names=NAMES)

    patch = store.import_geojson(gj, level=1, downsample=2.0, level_shape=(1000, 1000))
    # level-1 grid: x 50..150, y 100..200
    assert (patch.level, patch.region, patch.source) == (1, (100, 50, 100, 100), "geojson:qupath.geojson")
    mask = store.read(patch.key)
    assert mask[50, 10] == 3  # stroma, inside the square
    assert mask[30, 30] == 0  # the hole (level-1 x 70..90, y 120..140)
    assert mask[75, 75] == 2  # tumour drawn over stroma (later feature wins)
    assert (mask == 3).sum() == pytest.approx(100 * 100 - 20 * 20 - 30 * 30, rel=0.05)
    assert (mask == 2).sum() == pytest.approx(30 * 30, rel=0.1)


def test_bad_geojson_gets_one_clear_error(tmp_path):
    bad = tmp_path / "broken.geojson"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="broken.geojson: not a readable GeoJSON"):
        read_geojson_polygons(bad, NAMES)
    unknown = tmp_path / "unknown.geojson"
    unknown.write_text(json.dumps({"type": "FeatureCollection", "features": [
        _qupath_feature("Fat", [[[0, 0], [10, 0], [10, 10], [0, 0]]])]}))
    with pytest.raises(DataError, match="class 'Fat'.*does not know"):
        read_geojson_polygons(unknown, NAMES)
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(DataError, match="no class-annotated polygons"):
        read_geojson_polygons(empty, NAMES)
    with pytest.raises(DataError, match="file not found"):
        read_geojson_polygons(tmp_path / "missing.geojson", NAMES)


def test_sigkill_after_writing_loses_nothing(tmp_path, slide_file):
    """A process that writes corrections and is killed -9 right after leaves them on disk."""
    code = textwrap.dedent(f"""
        import os, signal, numpy as np
        from napari_dfa.corrections import CorrectionStore
        store = CorrectionStore.for_slide({str(slide_file)!r}, root={str(tmp_path)!r},
                                          class_names={NAMES!r})
        patch = store.create_patch(level=0, region=(0, 0, 600, 600))
        for i in range(5):  # five brush strokes, each written as it is made
            store.write(patch.key, (100 * i, 100 * i), np.full((40, 40), i + 1, np.uint8))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    store = CorrectionStore.for_slide(slide_file, root=tmp_path)
    (patch,) = store.patches()
    assert store.counts() == {i + 1: 1600 for i in range(5)}
    assert store.read(patch.key)[410, 410] == 5


def test_replay_keeps_a_thinned_prediction_away_from_corrections():
    from napari_dfa.corrections import replay_from_prediction

    labels = np.random.default_rng(0).integers(1, 6, size=(256, 320)).astype(np.uint8)
    corrected = np.zeros_like(labels)
    corrected[100:150, 100:200] = 2
    pseudo = replay_from_prediction(labels, corrected, keep=0.25, block=32, seed=1)
    kept = pseudo > 0
    assert not kept[corrected > 0].any()  # never fights a correction
    assert (pseudo[kept] == labels[kept]).all()  # replays the prediction as it is
    assert 0.1 < kept.mean() < 0.4  # about a quarter of the blocks
    # whole 32-pixel blocks, so neighbouring pixels are kept together
    assert kept[:32, :32].all() or not kept[:32, :32].any()
    with pytest.raises(DataError, match="differ in shape"):
        replay_from_prediction(labels, corrected[:10])
