"""A result on a slide beyond its model carries the caveat into every export: GeoJSON properties,
the areas CSV (a column), the labels TIFF / OME-Zarr, the overlay figure's title; through the
napari writers, `napari-dfa export`, `napari-dfa predict` and `napari-dfa demo --headless`.
Without a caveat the files are as they were."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage import data

from napari_dfa import labels as export
from napari_dfa.cli import main
from napari_dfa.commands.demo import write_overlay
from napari_dfa.model import load_model
from napari_dfa.slide import open_slide

NAMES = ["tumour", "stroma", "necrosis"]
CAVEAT = ("Caution: this slide's stain looks unlike the model's training data (1.3× beyond its range; trained "
          "on synthetic tissue only): expect errors, check the result closely and correct it")


@pytest.fixture
def labels():
    lab = np.zeros((120, 160), np.uint8)
    lab[10:60, 10:80], lab[60:110, 40:150], lab[20:40, 100:150] = 1, 2, 3
    return lab


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_geojson_and_csv_carry_the_caveat_and_only_when_there_is_one(labels, tmp_path):
    fc = json.loads(export.write_geojson(tmp_path / "a.geojson", labels, NAMES, caveat=CAVEAT).read_text())
    assert len(fc["features"]) == 3 and fc["napari_dfa"]["caveat"] == CAVEAT
    for f in fc["features"]:
        props = f["properties"]
        assert props["caveat"] == CAVEAT and props["metadata"] == {"napari-dfa caveat": CAVEAT}
        assert props["name"] == f"{props['classification']['name']} (caution: see caveat)"  # QuPath lists it
    rows = _csv(export.write_area_csv(tmp_path / "a.csv", labels, NAMES, caveat=CAVEAT))
    assert [r["class"] for r in rows] == NAMES and all(r["caveat"] == CAVEAT for r in rows)
    # no caveat: the formats as before
    plain = json.loads(export.write_geojson(tmp_path / "b.geojson", labels, NAMES).read_text())
    assert "napari_dfa" not in plain and all(set(f["properties"]) == {"objectType", "classification"}
                                             for f in plain["features"])
    assert list(_csv(export.write_area_csv(tmp_path / "b.csv", labels, NAMES))[0]) == [
        "class", "label", "pixels", "area_px0", "area_mm2", "percent"]


def test_stores_and_tiffs_keep_it_and_export_passes_it_on(labels, tmp_path):
    store = export.write_ome_zarr_labels(tmp_path / "s.labels.zarr", labels, NAMES)
    export.add_caveat(store, CAVEAT)
    assert export.read_labels(store)[1]["caveat"] == CAVEAT
    out = [tmp_path / "s.geojson", tmp_path / "s.tif", tmp_path / "s.csv", tmp_path / "copy.zarr"]
    assert main(["export", str(store), *sum((["--to", str(p)] for p in out), [])]) == 0
    assert all(f["properties"]["caveat"] == CAVEAT for f in json.loads(out[0].read_text())["features"])
    assert export.read_caveat(out[1]) == CAVEAT and export.read_labels(out[1])[1]["caveat"] == CAVEAT
    assert all(r["caveat"] == CAVEAT for r in _csv(out[2]))
    assert export.read_caveat(out[3]) == CAVEAT
    plain = export.write_labels_tiff(tmp_path / "p.tif", labels, NAMES)
    assert export.read_caveat(plain) is None and export.read_labels(plain)[1]["caveat"] is None


def test_napari_writers_take_it_from_the_layer(labels, tmp_path):
    import pandas as pd
    from napari.layers import Labels

    from napari_dfa import _writer

    layer = Labels(labels, features=pd.DataFrame({"index": [0, 1, 2, 3], "class": ["unlabelled", *NAMES]}),
                   metadata={"napari_dfa": {"caveat": CAVEAT}})
    data_, meta, _ = layer.as_layer_data_tuple()
    [gj] = _writer.write_labels_geojson(str(tmp_path / "w.geojson"), data_, meta)
    assert all(f["properties"]["caveat"] == CAVEAT for f in json.loads(open(gj).read())["features"])
    [tif] = _writer.write_labels_tiff(str(tmp_path / "w.tif"), data_, meta)
    [zarr_path] = _writer.write_labels_zarr(str(tmp_path / "w.zarr"), [data_, data_[::2, ::2]], meta)
    assert export.read_caveat(tif) == CAVEAT and export.read_caveat(zarr_path) == CAVEAT
    # a multiscale layer (a whole-slide result) is written from its finest level
    big = Labels([labels, labels[::2, ::2]], multiscale=True, metadata={"napari_dfa": {"caveat": CAVEAT}})
    data_, meta, _ = big.as_layer_data_tuple()
    [gj] = _writer.write_labels_geojson(str(tmp_path / "m.geojson"), data_, meta)
    assert json.loads(open(gj).read())["napari_dfa"]["caveat"] == CAVEAT


def test_overlay_title_says_it_whole(tmp_path, tiny_model_path, small_slide):  # noqa: F811
    seg = load_model(tiny_model_path)
    with open_slide(small_slide) as slide:
        lab = np.random.default_rng(0).integers(0, 6, slide.levels[2].shape[:2]).astype(np.uint8)
        plain = Image.open(write_overlay(tmp_path / "plain.png", slide, 2, lab, seg, date="2025-01-01"))
        warned = Image.open(write_overlay(tmp_path / "warned.png", slide, 2, lab, seg, date="2025-01-01",
                                          caveat=CAVEAT))
    assert warned.text["Caveat"] == CAVEAT and "Caveat" not in plain.text
    extra = warned.height - plain.height
    assert extra > 0  # the caveat's lines, under the title
    header = np.asarray(warned.convert("RGB"))[: extra + plain.height - lab.shape[0] - 1].astype(int)
    red = (header[..., 0] > 150) & (header[..., 1] < 80) & (header[..., 2] < 80)
    assert red.sum() > 200  # written in red, not cut: it wraps over lines of the figure's width


def ihc_slide(path):
    tifffile.imwrite(path, np.tile(data.immunohistochemistry(), (2, 2, 1)), photometric="rgb", tile=(256, 256),
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    return path


def test_predict_and_headless_demo_on_a_slide_beyond_the_model(tmp_path):
    """The demo model on a real IHC scan: every file says so, and the store keeps it for later exports."""
    slide = ihc_slide(tmp_path / "colon_ihc.tif")
    assert main(["predict", str(slide), "--model", "demo", "--out", str(tmp_path / "out"), "--device", "cpu",
                 "--geojson", "--areas"]) == 0
    store = tmp_path / "out" / "colon_ihc.labels.zarr"
    caveat = export.read_caveat(store)
    assert caveat.startswith("Caution: this looks like an IHC (DAB) stain, not H&E"), caveat
    fc = json.loads((tmp_path / "out" / "colon_ihc.geojson").read_text())
    assert fc["features"] and all(f["properties"]["caveat"] == caveat for f in fc["features"])
    assert all(r["caveat"] == caveat for r in _csv(tmp_path / "out" / "colon_ihc.areas.csv"))

    out = tmp_path / "demo"
    assert main(["demo", "--headless", "--slide", str(slide), "--out", str(out), "--device", "cpu"]) == 0
    overlay = Image.open(next(out.glob("*_overlay.png")))
    assert overlay.text["Caveat"] == caveat
    assert all(r["caveat"] == caveat for r in _csv(next(out.glob("*_areas.csv"))))
