"""Slides with OpenSlide bounds (MIRAX, Leica SCN, ...) are read in the frame QuPath shows: cropped
to ``openslide.bounds-*``, so GeoJSON written by napari-dfa lands on the same tissue in QuPath.

The test slide is a Leica SCN written here: a tiled BigTIFF whose XML puts the scanned image
(a synthetic slide, 1536×1024 px at 0.5 µm/px) at (500, 200) px inside a 4000×3000 px collection;
OpenSlide reads it as a 4000×3000 frame with ``openslide.bounds-x/y`` = 500/200, the same layout
as a MIRAX slide's empty margin."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_dfa import synth
from napari_dfa.cli import main
from napari_dfa.slide import open_slide

BOUNDS = {"x": 500, "y": 200, "width": 1536, "height": 1024}
FRAME = (4000, 3000)  # OpenSlide's full frame, width × height
NM_PER_PX = 500


def write_leica_scn(path, levels) -> None:
    """A minimal Leica SCN: one brightfield main image placed at BOUNDS in a FRAME collection."""
    h, w = levels[0].shape[:2]
    dims = "".join(f'<dimension sizeX="{lv.shape[1]}" sizeY="{lv.shape[0]}" r="{k}" ifd="{k}"/>'
                   for k, lv in enumerate(levels))
    xml = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<scn xmlns="http://www.leica-microsystems.com/scn/2010/10/01">'
        f'<collection name="test" uuid="c" sizeX="{FRAME[0] * NM_PER_PX}" sizeY="{FRAME[1] * NM_PER_PX}">'
        '<barcode>napari-dfa</barcode><image name="main" uuid="m">'
        '<creationDate>2024-01-01T00:00:00Z</creationDate><device model="Leica SCN400;Leica SCN" version="1"/>'
        f'<pixels sizeX="{w}" sizeY="{h}">{dims}</pixels>'
        f'<view sizeX="{w * NM_PER_PX}" sizeY="{h * NM_PER_PX}" offsetX="{BOUNDS["x"] * NM_PER_PX}" '
        f'offsetY="{BOUNDS["y"] * NM_PER_PX}" spacingZ="0"/>'
        '<scanSettings><objectiveSettings><objective>20</objective></objectiveSettings><illuminationSettings>'
        '<numericalAperture>0.7</numericalAperture><illuminationSource>brightfield</illuminationSource>'
        '</illuminationSettings></scanSettings></image></collection></scn>'
    )
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k, lv in enumerate(levels):
            res = 1e4 / (NM_PER_PX / 1000 * 2**k)  # pixels per cm
            tw.write(lv, tile=(256, 256), compression="zlib", photometric="rgb",
                     description=xml if k == 0 else None, resolution=(res, res), resolutionunit="CENTIMETER",
                     metadata=None)


@pytest.fixture(scope="module")
def slides(tmp_path_factory, tiny_segmenter):
    root = tmp_path_factory.mktemp("bounds")
    svs, _ = synth.write_slide(root / "case.svs", size=(BOUNDS["height"], BOUNDS["width"]), seed=5, mpp=0.5)
    with open_slide(svs) as slide:
        levels = [lv.compute() for lv in slide.levels]
    scn = root / "case_scn.scn"
    write_leica_scn(scn, levels)
    seg = tiny_segmenter()
    return {"root": root, "svs": svs, "scn": scn, "levels": levels,
            "model": str(seg.save(root / "tiny.safetensors"))}


def test_openslide_reports_bounds_and_the_slide_is_cropped_to_them(slides):
    import openslide

    osr = openslide.OpenSlide(str(slides["scn"]))
    assert osr.dimensions == FRAME  # the full frame, mostly empty
    assert {k: int(osr.properties[f"openslide.bounds-{k}"]) for k in BOUNDS} == BOUNDS
    with open_slide(slides["scn"]) as slide:
        assert slide.backend == "openslide" and slide.metadata["bounds"] == BOUNDS
        assert slide.shape == (BOUNDS["height"], BOUNDS["width"])  # QuPath's image size
        assert slide.mpp == pytest.approx(0.5)
        for k, expect in enumerate(slides["levels"]):  # pixel (0, 0) is the bounds' corner, every level
            np.testing.assert_array_equal(slide.levels[k].compute(), expect)
        # back to OpenSlide's frame: add the bounds' corner
        y, x = 300, 700
        full = np.asarray(osr.read_region((x + BOUNDS["x"], y + BOUNDS["y"]), 0, (32, 32)))[..., :3]
        np.testing.assert_array_equal(slide.read_region(0, (y, x, 32, 32)), full)
    osr.close()


def test_geojson_is_in_the_frame_qupath_shows(slides, tmp_path):
    """The same tissue as a bounds-less slide gives the same GeoJSON: coordinates start at the
    bounds' corner, where QuPath's (0, 0) is, not at OpenSlide's frame corner."""
    args = ["--model", slides["model"], "--geojson", "--tile", "256", "--overlap", "32", "--device", "cpu"]
    assert main(["predict", str(slides["scn"]), "--out", str(tmp_path / "scn"), *args]) == 0
    assert main(["predict", str(slides["svs"]), "--out", str(tmp_path / "svs"), *args]) == 0
    scn = json.loads((tmp_path / "scn" / "case_scn.geojson").read_text())
    svs = json.loads((tmp_path / "svs" / "case.geojson").read_text())
    def strip(features):  # feature ids are random UUIDs
        return [{k: v for k, v in f.items() if k != "id"} for f in features]

    assert scn["features"] and strip(scn["features"]) == strip(svs["features"])
    xs = [x for f in scn["features"] for ring in _rings(f["geometry"]) for x, _ in ring]
    ys = [y for f in scn["features"] for ring in _rings(f["geometry"]) for _, y in ring]
    assert 0 <= min(xs) and max(xs) <= BOUNDS["width"] and 0 <= min(ys) and max(ys) <= BOUNDS["height"]


def _rings(geometry):
    if geometry["type"] == "Polygon":
        return geometry["coordinates"]
    return [ring for poly in geometry["coordinates"] for ring in poly]
