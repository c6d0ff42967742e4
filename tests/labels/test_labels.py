"""Exports: QuPath GeoJSON polygons, pyramidal TIFF, OME-Zarr labels, area CSV, CLI and napari writers."""

from __future__ import annotations

import csv
import json
import uuid

import numpy as np
import pytest
import scipy.ndimage as ndi
import shapely
import tifffile
from shapely.geometry import shape

from napari_dfa import labels as export
from napari_dfa.labels.polygons import mask_to_geometry
from napari_dfa.cli import main
from napari_dfa.errors import DataError

NAMES = ["tumour", "stroma", "necrosis"]
COLORS = [(230, 40, 40), (255, 170, 200), (240, 200, 40)]


@pytest.fixture
def labels():
    """Blobby classes with holes, islands and corner contacts, plus an unlabelled band."""
    rng = np.random.default_rng(0)
    lab = np.zeros((300, 420), np.uint8)
    for value in (1, 2, 3):
        field = ndi.gaussian_filter(rng.random((300, 420)), 6)
        lab[field > np.quantile(field, 0.62)] = value
    lab[140:150, :] = 0
    lab[10:12, 10:12] = 1  # a 2×2 island
    lab[20, 20] = lab[21, 21] = 2  # two pixels touching at a corner
    return lab


def _pixel_centres_inside(geom, shape_, scale=1.0, offset=(0.0, 0.0)):
    yy, xx = np.mgrid[0 : shape_[0], 0 : shape_[1]]
    return shapely.contains_xy(geom, (xx + 0.5) * scale + offset[1], (yy + 0.5) * scale + offset[0])


def test_geojson_is_qupath_shaped_with_valid_polygons_matching_the_labels(labels, tmp_path):
    path = export.write_geojson(tmp_path / "s.geojson", labels, NAMES, COLORS, downsample=4.0, offset=(1000, 2000))
    fc = json.loads(path.read_text())
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 3
    for f in fc["features"]:
        assert f["type"] == "Feature" and uuid.UUID(f["id"]).version == 4
        assert f["properties"]["objectType"] == "annotation"
        cls = f["properties"]["classification"]
        value = NAMES.index(cls["name"]) + 1
        assert cls["color"] == list(COLORS[value - 1])
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        polys = [f["geometry"]["coordinates"]] if f["geometry"]["type"] == "Polygon" else f["geometry"]["coordinates"]
        for poly in polys:
            for ring in poly:  # closed rings
                assert ring[0] == ring[-1] and len(ring) >= 5
        geom = shape(f["geometry"])
        assert geom.is_valid, shapely.is_valid_reason(geom)
        # Level-0 coordinates: area scales with downsample², pixels map back exactly.
        assert geom.area == pytest.approx(16.0 * (labels == value).sum())
        inside = _pixel_centres_inside(geom, labels.shape, 4.0, (1000, 2000))
        assert np.array_equal(inside, labels == value)
        minx, miny, _, _ = geom.bounds
        assert minx >= 2000 and miny >= 1000


def test_split_gives_one_feature_per_region(labels):
    fc = export.labels_to_geojson(labels, NAMES, COLORS, split=True)
    per_class = {n: 0 for n in NAMES}
    for f in fc["features"]:
        assert shape(f["geometry"]).geom_type == "Polygon"
        per_class[f["properties"]["classification"]["name"]] += 1
    for value, name in enumerate(NAMES, start=1):
        assert per_class[name] == ndi.label(labels == value)[1]  # 4-connected regions


def test_traced_polygons_are_valid_and_exact_on_random_masks():
    rng = np.random.default_rng(1)
    for _ in range(150):
        h, w = rng.integers(1, 24, 2)
        mask = rng.random((h, w)) < rng.uniform(0.2, 0.8)  # pinches, holes, corner contacts
        geom = mask_to_geometry(mask)
        if not mask.any():
            assert geom is None
            continue
        assert geom.is_valid, (shapely.is_valid_reason(geom), mask.astype(int))
        assert geom.area == mask.sum()
        assert np.array_equal(_pixel_centres_inside(geom, mask.shape), mask)


def test_labels_beyond_the_class_list_are_refused(labels):
    with pytest.raises(DataError, match="label 3"):
        export.labels_to_geojson(labels, NAMES[:2], COLORS[:2])


def test_tiff_roundtrip_with_pyramid_and_class_names(labels, tmp_path):
    big = np.kron(labels, np.ones((2, 2), np.uint8))  # 600×840: three levels at 256-pixel tiles
    path = export.write_labels_tiff(tmp_path / "l.tif", big, NAMES, COLORS, downsample=2.0, offset=(8, 16), mpp=0.25)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        assert [lv.shape for lv in series.levels] == [(600, 840), (300, 420), (150, 210)]
        assert tif.pages[0].is_tiled and tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert np.array_equal(series.levels[1].asarray(), big[::2, ::2])
    back, info = export.read_labels(path)
    assert np.array_equal(back, big)
    assert info["class_names"] == NAMES and info["class_colors"] == COLORS
    assert info["downsample"] == 2.0 and info["offset"] == (8, 16) and info["mpp"] == 0.25
    _, info1 = export.read_labels(path, level=1)
    assert info1["downsample"] == 4.0


def test_ome_zarr_export_opens_with_ome_zarr_reader(labels, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    big = np.kron(labels, np.ones((4, 4), np.uint8))  # 1200×1680 → a pyramid
    path = export.write_ome_zarr_labels(tmp_path / "l.zarr", big, NAMES, COLORS, downsample=2.0, offset=(10, 20))
    node = next(iter(Reader(parse_url(str(path)))()))
    assert [d.shape for d in node.data] == [(1200, 1680), (600, 840), (300, 420), (150, 210)]
    assert np.array_equal(np.asarray(node.data[0]), big)
    assert np.array_equal(np.asarray(node.data[1]), big[::2, ::2])
    assert {v: p["class"] for v, p in node.metadata["properties"].items()} == {1: "tumour", 2: "stroma", 3: "necrosis"}
    assert node.metadata["color"][2] == pytest.approx([c / 255 for c in COLORS[1]] + [1.0])
    scale = node.metadata["coordinateTransformations"][1][0]["scale"]
    assert scale == [4.0, 4.0]


def test_area_csv(labels, tmp_path):
    path = export.write_area_csv(tmp_path / "a.csv", labels, NAMES, downsample=2.0, mpp=0.5)
    rows = list(csv.DictReader(path.open()))
    counts = [(labels == v).sum() for v in (1, 2, 3)]
    assert [r["class"] for r in rows] == NAMES
    assert [int(r["pixels"]) for r in rows] == counts
    assert float(rows[0]["area_px0"]) == 4 * counts[0]
    assert float(rows[0]["area_mm2"]) == pytest.approx(4 * counts[0] * (0.5e-3) ** 2, rel=1e-5)
    assert sum(float(r["percent"]) for r in rows) == pytest.approx(100.0, abs=1e-3)


def test_export_command_converts_a_store(labels, tmp_path, capsys):
    store = export.write_ome_zarr_labels(tmp_path / "s.labels.zarr", labels, NAMES, COLORS, downsample=2.0)
    out = [tmp_path / "s.geojson", tmp_path / "s.tif", tmp_path / "s.csv", tmp_path / "copy.zarr"]
    assert main(["export", str(store), *sum((["--to", str(p)] for p in out), [])]) == 0
    fc = json.loads(out[0].read_text())
    assert {f["properties"]["classification"]["name"] for f in fc["features"]} == set(NAMES)
    assert np.array_equal(export.read_labels(out[1])[0], labels)
    assert np.array_equal(export.read_labels(out[3])[0][:], labels)
    assert main(["export", str(tmp_path / "missing.zarr"), "--to", str(tmp_path / "x.geojson")]) == 1
    assert "missing.zarr" in capsys.readouterr().err
    assert main(["export", str(store), "--to", str(tmp_path / "x.png")]) == 1


def test_napari_writers_use_the_layer_classes_and_placement(labels, tmp_path):
    import pandas as pd
    from napari.layers import Labels
    from napari.utils.colormaps import DirectLabelColormap

    from napari_dfa import _writer

    colors = {i + 1: np.array([*c, 255]) / 255 for i, c in enumerate(COLORS)}
    cmap = DirectLabelColormap(color_dict={None: (0, 0, 0, 0), **colors})
    layer = Labels(labels, scale=(4, 4), translate=(100, 200), colormap=cmap,
                   features=pd.DataFrame({"index": [0, 1, 2, 3], "class": ["unlabelled", *NAMES]}))
    data, meta, kind = layer.as_layer_data_tuple()
    assert kind == "labels"
    [gj] = _writer.write_labels_geojson(str(tmp_path / "w.geojson"), data, meta)
    feats = json.loads(open(gj).read())["features"]
    assert {f["properties"]["classification"]["name"] for f in feats} == set(NAMES)
    assert {tuple(f["properties"]["classification"]["color"]) for f in feats} == set(COLORS)
    assert min(shape(f["geometry"]).bounds[0] for f in feats) >= 200
    [tif] = _writer.write_labels_tiff(str(tmp_path / "w.tif"), data, meta)
    back, info = export.read_labels(tif)
    assert np.array_equal(back, labels) and info["class_names"] == NAMES and info["downsample"] == 4.0
    [zarr_path] = _writer.write_labels_zarr(str(tmp_path / "w.zarr"), [data, data[::2, ::2]], meta)
    back, info = export.read_labels(zarr_path)
    assert np.array_equal(back[:], labels) and info["offset"] == (100.0, 200.0)


@pytest.mark.gui
def test_save_from_napari_through_the_manifest(labels, tmp_path, make_napari_viewer):
    import pandas as pd

    viewer = make_napari_viewer()
    layer = viewer.add_labels(labels, scale=(2, 2), name="pred",
                              features=pd.DataFrame({"index": [0, 1, 2, 3], "class": ["unlabelled", *NAMES]}))
    shown = [tuple(int(round(255 * v)) for v in c[:3]) for c in layer.colormap.map(np.array([1, 2, 3]))]
    for suffix in ("geojson", "tif", "zarr"):
        path = tmp_path / f"pred.{suffix}"
        assert viewer.layers.save(str(path), selected=False, plugin="napari-dfa") == [str(path)]
    feats = json.loads((tmp_path / "pred.geojson").read_text())["features"]
    assert {f["properties"]["classification"]["name"]: tuple(f["properties"]["classification"]["color"])
            for f in feats} == dict(zip(NAMES, shown))
    for suffix in ("tif", "zarr"):
        back, info = export.read_labels(tmp_path / f"pred.{suffix}")
        assert np.array_equal(np.asarray(back[:]), labels) and info["class_names"] == NAMES
        assert info["downsample"] == 2.0
