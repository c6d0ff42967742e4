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
from napari_dfa.files.paths import corrections_store_path as store_path_for
from napari_dfa.errors import DataError
from bcss_classes import NAMES


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
    store.create_patch(level=0, region=(0, 0, 64, 64))  # an empty patch beside the painted one
    patch = store.create_patch(level=0, region=(1000, 2000, 512, 512))
    block = np.full((10, 10), 3, np.uint8)
    store.write(patch.key, (200, 300), block)
    calls = []

    def read_rgb(level, region):
        calls.append((level, region))
        return np.full((region[2], region[3], 3), 128, np.uint8)

    (rgb, mask), = store.samples(read_rgb, context=128)  # 138 px of strokes and margin, read within 138
    assert calls == [(0, (1000 + 136, 2000 + 236, 138, 138))]
    assert rgb.shape == (138, 138, 3) and mask.shape == (138, 138)
    assert (mask == 3).sum() == 100 and set(np.unique(mask)) == {0, 3}
    # By default a sample is read with the slide around it, as inference sees it: the strokes sit
    # in the middle of a 1024² box (not past the slide's top-left), the mask 0 around them.
    calls.clear()
    (rgb, mask), = store.samples(read_rgb)
    assert calls == [(0, (1000 + 136 - 443, 2000 + 236 - 443, 1024, 1024))]
    assert rgb.shape == (1024, 1024, 3) and (mask == 3).sum() == 100
    assert (mask[443 + 64:443 + 74, 443 + 64:443 + 74] == 3).all()
    # a reader that stops at the slide's edge: padded with glass
    (rgb, mask), = store.samples(lambda level, region: np.zeros((50, 60, 3), np.uint8))
    assert rgb.shape == (1024, 1024, 3) and rgb[100, 100, 0] == 255 and rgb[10, 10, 0] == 0


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


def test_store_is_keyed_by_content_not_path(tmp_path):
    """The same pixels under another name (or another reader) find the same store; other pixels
    at the same path do not."""
    from napari_dfa.corrections.store import slide_content_key

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (1200, 900, 3), dtype=np.uint8)
    key = slide_content_key(pixels, 0.5)
    assert key == slide_content_key(pixels.copy(), 0.5)
    assert key != slide_content_key(pixels, 0.25)  # another scale is another slide
    other = pixels.copy()
    other[600, 450] ^= 1  # one pixel of the central tile differs
    assert key != slide_content_key(other, 0.5)
    a = CorrectionStore.for_slide(tmp_path / "a.svs", root=tmp_path / "c", class_names=NAMES, content=key)
    a.create_patch(level=0, region=(0, 0, 10, 10))
    b = CorrectionStore.for_slide(tmp_path / "moved" / "a copy.svs", root=tmp_path / "c", content=key)
    assert len(b.patches()) == 1 and b.class_names == NAMES
    with pytest.raises(DataError, match="no correction store"):
        CorrectionStore.for_slide(tmp_path / "a.svs", root=tmp_path / "c", create=False,
                                  content=slide_content_key(other, 0.5))


def test_list_hide_delete_remap_and_export(tmp_path, slide_file):
    """What the list of saved corrections does: info per patch, hidden patches neither counted nor
    trained on, classes renamed/removed/added by name, export as QuPath GeoJSON that reads back."""
    from napari_dfa.corrections.geojson import geojson_classes, missing_classes

    store = CorrectionStore.for_slide(slide_file, root=tmp_path, class_names=NAMES)
    a = store.create_patch(level=0, region=(100, 200, 64, 64))
    b = store.create_patch(level=1, region=(0, 0, 32, 32), downsample=2.0)
    store.write(a.key, (0, 0), np.full((64, 64), 3, np.uint8))
    store.write(b.key, (0, 0), np.full((32, 32), 5, np.uint8))
    info = store.info(a.key)
    assert info["pixels"] == {"stroma": 4096} and not info["hidden"] and info["created"]
    store.set_hidden(b.key)
    assert store.counts_by_name() == {"stroma": 4096} and store.corrected_pixels() == 4096
    assert len(store.samples(lambda level, region: np.zeros((*region[2:], 3), np.uint8))) == 1
    assert store.counts(include_hidden=True) == {3: 4096, 5: 1024}

    # rename "stroma" to "Stroma 2", remove "necrosis", add "fat": labels follow their names
    store.remap_classes(["inflammatory", "tumour", "Stroma 2", "other", "fat"], renames={"stroma": "Stroma 2"})
    assert store.read(a.key).max() == 3 and store.read(b.key).max() == 0
    assert store.class_names[-1] == "fat"

    out = store.export_geojson(tmp_path / "corrections.geojson")
    doc = json.loads(out.read_text())
    assert [f["properties"]["classification"]["name"] for f in doc["features"]] == ["Stroma 2"]
    found = geojson_classes(out)
    assert list(found) == ["Stroma 2"] and found["Stroma 2"]["features"] == 1
    assert missing_classes(found, NAMES) == ["Stroma 2"] and missing_classes(found, ["stroma 2"]) == []
    # read back at level 0: the same 64×64 square at (y=100, x=200)
    again = CorrectionStore(tmp_path / "again.zarr", class_names=store.class_names)
    patch = again.import_geojson(out)
    assert patch.region == (100, 200, 64, 64) and (again.read(patch.key) == 3).all()
    store.delete(a.key)
    assert [p.key for p in store.patches()] == [b.key]


def test_qupath_classes_the_model_lacks_and_ignore(tmp_path):
    from napari_dfa.corrections.geojson import geojson_classes, missing_classes

    def feature(name, x, color=None):
        cls = {"name": name} if color is None else {"name": name, "color": color}
        return {"type": "Feature", "id": str(uuid.uuid4()),
                "geometry": {"type": "Polygon", "coordinates": [[[x, 0], [x + 10, 0], [x + 10, 10], [x, 10], [x, 0]]]},
                "properties": {"objectType": "annotation", "classification": cls}}

    gj = tmp_path / "qupath.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        feature("Tumor", 0), feature("Fat", 20, -3355444), feature("Ignore*", 40), feature("Tumor: Positive", 60)]}))
    found = geojson_classes(gj)
    assert set(found) == {"Tumor", "Fat", "Tumor: Positive"}  # Ignore* is the ignore label, not a class
    assert found["Fat"]["color"] == (204, 204, 204)
    assert missing_classes(found, ["tumor", "stroma"]) == ["Fat"]  # the derived class matches its base


def test_a_second_import_replaces_the_first_at_any_level(tmp_path, slide_file):
    """Same content at another level, the same ids in another file, and a file without ids:
    each import of the same annotations replaces the earlier one; other annotations stay."""
    square = [[[100, 200], [300, 200], [300, 400], [100, 400], [100, 200]]]
    other = [[[500, 500], [540, 500], [540, 540], [500, 540], [500, 500]]]
    store = CorrectionStore.for_slide(slide_file, root=tmp_path, class_names=NAMES)
    a = tmp_path / "a.geojson"
    a.write_text(json.dumps({"type": "FeatureCollection", "features": [_qupath_feature("Stroma", square)]}))
    b = tmp_path / "b.geojson"  # unrelated annotations: kept whatever is imported after
    b.write_text(json.dumps({"type": "FeatureCollection", "features": [_qupath_feature("Necrosis", other)]}))
    store.import_geojson(b)
    store.import_geojson(a, level=0)
    patch, found = store.import_geojson(a, level=1, downsample=2.0, level_shape=(1000, 1000), report=True)
    assert len(found.replaced) == 1 and len(store.patches()) == 2
    assert store.counts_by_name() == {"stroma": 100 * 100, "necrosis": 40 * 40}
    doc = json.loads(a.read_text())
    doc["features"][0]["geometry"]["coordinates"][0][0] = [90, 200]  # edited in QuPath, same id
    doc["features"][0]["geometry"]["coordinates"][0][-1] = [90, 200]
    edited = tmp_path / "a-v2.geojson"
    edited.write_text(json.dumps(doc))
    patch, found = store.import_geojson(edited, report=True)
    assert len(found.replaced) == 1 and len(store.patches()) == 2
    assert set(store.counts_by_name()) == {"stroma", "necrosis"} and store.counts_by_name()["necrosis"] == 1600
    for f in doc["features"]:
        f.pop("id", None)
    bare = tmp_path / "no-ids.geojson"
    bare.write_text(json.dumps(doc))
    store.import_geojson(bare)
    store.import_geojson(bare)  # no ids: the same content is the same import
    assert len(store.patches()) == 3


def test_confirmed_regions_go_out_and_come_back_as_confirmed(tmp_path, slide_file):
    """Export writes a confirmed region's labels as annotations marked with QuPath object metadata
    (napari-dfa: confirmed); importing the file gives a confirmed patch again beside the strokes."""
    store = CorrectionStore.for_slide(slide_file, root=tmp_path / "a", class_names=NAMES)
    strokes = store.create_patch(level=0, region=(0, 0, 200, 200))
    block = np.zeros((200, 200), np.uint8)
    block[20:60, 20:60] = 5
    store.write(strokes.key, (0, 0), block)
    shown = np.zeros((100, 120), np.uint8)
    shown[:, :60], shown[:, 60:] = 3, 2
    store.confirm_region(level=0, region=(300, 300, 100, 120), labels=shown)
    out = store.export_geojson(tmp_path / "all.geojson")
    doc = json.loads(out.read_text())
    marked = [f for f in doc["features"] if f["properties"].get("metadata") == {"napari-dfa": "confirmed"}]
    assert {f["properties"]["classification"]["name"] for f in marked} == {"stroma", "tumour"}

    again = CorrectionStore.for_slide(slide_file, root=tmp_path / "b", class_names=NAMES)
    again.import_geojson(out)
    sources = sorted(p.source for p in again.patches())
    assert sources == ["confirmed", "geojson:all.geojson"]
    assert again.counts_by_name() == store.counts_by_name() == {"tumour": 6000, "stroma": 6000, "necrosis": 1600}
    again.import_geojson(out)  # the same file again: replaced, both patches
    assert sorted(p.source for p in again.patches()) == ["confirmed", "geojson:all.geojson"]


def test_class_names_match_as_pathologists_write_them(tmp_path, slide_file):
    """QuPath's default "Tumor" is the model's "tumour", "Immune cells" its "inflammatory", UK/US
    spellings are one class: nothing is skipped or added twice, and the match is named."""
    from napari_dfa.corrections import geojson_classes, matched_names, missing_classes

    square = lambda x: [[[x, 0], [x + 10, 0], [x + 10, 10], [x, 10], [x, 0]]]  # noqa: E731
    gj = tmp_path / "qupath.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        _qupath_feature("Tumor", square(0)), _qupath_feature("Immune cells", square(20)),
        _qupath_feature("Hemorrhage", square(40)), _qupath_feature("Fat", square(60))]}))
    names = [*NAMES, "haemorrhage"]
    found = geojson_classes(gj)
    assert missing_classes(found, names) == ["Fat"]
    assert matched_names(found, names) == {"Tumor": "tumour", "Immune cells": "inflammatory",
                                           "Hemorrhage": "haemorrhage"}
    store = CorrectionStore.for_slide(slide_file, root=tmp_path, class_names=names)
    store.import_geojson(gj)
    assert store.counts_by_name() == {"inflammatory": 100, "tumour": 100, "haemorrhage": 100}
