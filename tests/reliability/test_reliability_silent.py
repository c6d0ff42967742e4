"""Nothing silently different (issue 23, cause 8): greyscale and transparent test tiles are
converted with a note, not scored as if they were colour; a GeoJSON crs is refused, overlapping
annotations and self-crossing outlines are kept with a note that says how they were settled; a
safetensors file is read by its content whatever its name."""

from __future__ import annotations

import json
import logging
import pickle
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from napari_dfa import synth
from napari_dfa.cli import main
from napari_dfa.corrections import CorrectionStore
from napari_dfa.corrections.geojson import read_geojson
from napari_dfa.corrections.rasterise import rasterise_polygons
from napari_dfa.errors import CheckpointError, DataError
from napari_dfa.model import load_model
from napari_dfa.training.datasets import image_kind, read_rgb, write_sampath
from bcss_classes import NAMES


# --- evaluate: greyscale and transparent tiles ------------------------------------------------------
@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    items = [(f"s{i}", *synth.generate_tile(seed=7000 + i, size=64), -1) for i in range(4)]
    return write_sampath(tmp_path_factory.mktemp("tiles") / "rgb", items)


def _convert(folder, tmp_path, how: dict) -> object:
    """A copy of the dataset with some images re-saved in another mode (``{index: mode}``)."""
    out = tmp_path / "data"
    shutil.copytree(folder, out)
    imgs = sorted((out / "img").iterdir())
    for i, mode in how.items():
        im = Image.open(imgs[i]).convert("RGB")
        path = imgs[i]
        if mode == "RGBA":
            im = im.convert("RGBA")
            a = np.array(im)
            a[:16, :, 3] = 0  # a transparent band at the top
            im = Image.fromarray(a)
        elif mode == "TIFF-L":
            import tifffile

            path.unlink()
            path = path.with_suffix(".tif")
            tifffile.imwrite(path, np.array(im.convert("L")))
            continue
        else:
            im = im.convert(mode)
        im.save(path)
    return out


@pytest.mark.parametrize("how,words", [
    ({0: "L", 1: "L", 2: "L", 3: "L"}, "4 of 4 test images are greyscale"),
    ({2: "L"}, "1 of 4 test images are greyscale"),
    ({1: "LA"}, "1 of 4 test images are with transparency"),
    ({3: "RGBA"}, "1 of 4 test images are with transparency"),
    ({0: "TIFF-L"}, "1 of 4 test images are greyscale"),
])
def test_evaluate_says_which_tiles_were_converted(tiles, tmp_path, capsys, how, words):
    data = _convert(tiles, tmp_path, how)
    report = tmp_path / "r.json"
    assert main(["evaluate", "--model", "demo", "--data", str(data), "--json", str(report), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert words in captured.err and words in captured.out
    assert any(words in n for n in json.loads(report.read_text())["_meta"]["notes"])


def test_rgb_tiles_get_no_note(tiles, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["evaluate", "--model", "demo", "--data", str(tiles), "--json", str(report), "--device", "cpu"]) == 0
    assert "note:" not in capsys.readouterr().err and json.loads(report.read_text())["_meta"]["notes"] == []


def test_transparent_pixels_are_glass_not_what_lay_under_them(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (200, 40, 120)
    rgba[:4, :, 3] = 0  # transparent over black-ish... the colour under it is not tissue
    rgba[4:, :, 3] = 255
    rgba[6:, :, 3] = 128
    for path in (tmp_path / "a.png", tmp_path / "a.tif"):
        if path.suffix == ".png":
            Image.fromarray(rgba).save(path)
        else:
            import tifffile

            tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=[2])
        rgb = read_rgb(path)
        assert image_kind(path) == "rgba"
        assert (rgb[:4] == 255).all() and (rgb[4:6] == (200, 40, 120)).all()
        assert np.allclose(rgb[6:].astype(int), [227, 147, 187], atol=1)  # half over white


# --- GeoJSON ---------------------------------------------------------------------------------------
def _square(x0, y0, x1, y1):
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def _feature(ring, cls):
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": ring},
            "properties": {"objectType": "annotation", "classification": {"name": cls}}}


def _write(path, features, **extra):
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features, **extra}))
    return path


@pytest.mark.parametrize("crs", [
    {"type": "name", "properties": {"name": "urn:ogc:def:crs:OGC:1.3:CRS84"}},
    {"type": "name", "properties": {"name": "EPSG:4326"}},
    {"type": "name", "properties": {"name": "EPSG:3857"}},
    {"type": "link", "properties": {"href": "http://example.org/crs/42", "type": "proj4"}},
    "EPSG:32633",
])
def test_a_declared_coordinate_system_is_refused(tmp_path, crs):
    path = _write(tmp_path / "a.geojson", [_feature(_square(0, 0, 10, 10), "tumour")], crs=crs)
    with pytest.raises(DataError, match="coordinate system") as err:
        read_geojson(path, NAMES)
    assert "a.geojson" in str(err.value) and "pixels" in str(err.value)


@pytest.mark.parametrize("crs", [None, {"type": "name", "properties": {"name": "image pixels"}}])
def test_no_crs_or_a_pixel_crs_is_read(tmp_path, crs):
    path = _write(tmp_path / "a.geojson", [_feature(_square(0, 0, 10, 10), "tumour")], crs=crs)
    assert len(read_geojson(path, NAMES).polygons) == 1


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(1, 15), st.integers(1, 15),
                          st.integers(0, 5)), min_size=1, max_size=8))
def test_overlaps_of_two_classes_are_counted_as_settled(boxes):
    """Rectangles on whole pixels: the pixels each later class took from another, by brute force."""
    polygons = [(label, [np.asarray(_square(x, y, x + w, y + h)[0], float)]) for x, y, w, h, label in boxes]
    notes: list = []
    try:
        mask, (y0, x0) = rasterise_polygons(polygons, class_names=NAMES, notes=notes)
    except DataError:  # only Ignore polygons: nothing painted
        assert all(label == 0 for *_, label in boxes)
        return
    grid = np.zeros((64, 64), np.uint8)
    painted = np.zeros((64, 64), bool)
    expected: dict = {}
    for x, y, w, h, label in boxes:
        view, seen = grid[y:y + h, x:x + w], painted[y:y + h, x:x + w]
        if label:
            took = view[seen & (view > 0) & (view != label)]
            for old, n in zip(*np.unique(took, return_counts=True)):
                expected[(int(old), label)] = expected.get((int(old), label), 0) + int(n)
        view[...] = label
        seen[...] = True
    np.testing.assert_array_equal(mask, grid[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]])
    want = [f"{n} px where {NAMES[a - 1]} and {NAMES[b - 1]} annotations overlap: {NAMES[b - 1]} kept "
            "(the later feature in the file wins)" for (a, b), n in sorted(expected.items())]
    assert notes == want


def test_an_import_says_how_overlaps_were_settled(tmp_path, caplog):
    path = _write(tmp_path / "a.geojson", [_feature(_square(0, 0, 20, 20), "tumour"),
                                          _feature(_square(10, 10, 30, 30), "stroma"),
                                          _feature(_square(25, 25, 35, 35), "stroma")])
    store = CorrectionStore(tmp_path / "s.zarr", class_names=NAMES)
    with caplog.at_level(logging.WARNING):
        _, found = store.import_geojson(path, report=True)
    assert found.notes == ["100 px where tumour and stroma annotations overlap: stroma kept (the later feature "
                           "in the file wins)"]
    assert "100 px where tumour and stroma" in caplog.text
    assert store.counts_by_name() == {"tumour": 300, "stroma": 400 + 100 - 25}


@pytest.mark.parametrize("ring,kind", [
    ([[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]], "bow tie"),
    ([[0, 0], [40, 20], [40, 0], [0, 20], [0, 0]], "bow tie"),
    ([[5, 5], [5, 25], [25, 5], [25, 25], [5, 5]], "bow tie"),
    ([[0, 0], [5, 5], [10, 10], [0, 0]], "one line"),
    ([[0, 3], [10, 3], [20, 3], [0, 3]], "one line"),
])
def test_a_self_crossing_outline_is_named_as_such(tmp_path, ring, kind):
    path = _write(tmp_path / "a.geojson", [_feature([ring], "tumour"), _feature(_square(50, 50, 60, 60), "stroma")])
    found = read_geojson(path, NAMES)
    if kind == "bow tie":
        assert len(found.polygons) == 2 and not found.skipped
        assert len(found.notes) == 1 and "crosses itself" in found.notes[0] and "bow tie" in found.notes[0]
        mask, _ = rasterise_polygons(found.polygons[:1])
        span = np.ptp(np.asarray(ring, float), axis=0)
        assert (mask == 2).sum() > 0.3 * span[0] * span[1]  # both loops (each a quarter of the box)
    else:
        assert found.skipped and "lie on one line" in found.skipped[0][1] and not found.notes


# --- checkpoints by content --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_segmenter):
    seg = tiny_segmenter()
    return seg.save(tmp_path_factory.mktemp("ck") / "m.safetensors")


@pytest.mark.parametrize("name", ["m.pt", "m.pth", "m.bin", "m.ckpt", "m"])
def test_a_safetensors_file_under_another_name_is_read_by_content(saved, tmp_path, caplog, name):
    other = tmp_path / name
    shutil.copyfile(saved, other)
    with caplog.at_level(logging.WARNING):
        seg = load_model(other)
    assert seg.class_names == NAMES
    if other.suffix:
        assert "read as safetensors" in caplog.text


@pytest.mark.parametrize("name", ["evil.safetensors", "evil.pt", "evil"])
def test_a_pickle_is_refused_whatever_its_name(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    with pytest.raises(CheckpointError, match="pickle"):
        load_model(path)
