"""DICOM WSI: a series made in the test by ``wsidicomizer`` from a synthetic SVS opens through
``open_slide`` (the folder or any file of the series) and the napari reader, pixel for pixel and
with its microns per pixel."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dfa import synth
from napari_dfa._reader import napari_get_reader
from napari_dfa.errors import SlideError
from napari_dfa.slide import open_slide


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A 3-level SVS (0.5 µm/px) and its DICOM WSI conversion (one .dcm per level, same 256² tiles,
    so the JPEG tiles are copied, not re-encoded)."""
    from wsidicomizer import WsiDicomizer

    root = tmp_path_factory.mktemp("dicom")
    svs, _ = synth.write_slide(root / "case.svs", size=(1024, 1536), seed=4, mpp=0.5)
    folder = root / "case_dicom"
    files = WsiDicomizer.convert(str(svs), str(folder), tile_size=256, include_label=False,
                                 include_overview=False)
    assert len(files) >= 3
    return {"svs": svs, "folder": folder}


def test_folder_and_any_file_of_the_series_open_as_the_slide(series):
    with open_slide(series["svs"]) as svs:
        expect = [lv.compute() for lv in svs.levels]
    files = sorted(series["folder"].glob("*.dcm"), key=lambda p: p.stat().st_size)
    for path in (series["folder"], files[0]):  # the folder, and its smallest file (a low level)
        with open_slide(path) as slide:
            assert slide.backend == "dicom" and slide.metadata["vendor"] == "dicom"
            assert slide.mpp == pytest.approx(0.5)
            assert slide.downsamples == [1.0, 2.0, 4.0]
            assert [lv.shape for lv in slide.levels] == [e.shape for e in expect]
            for level, e in enumerate(expect):
                np.testing.assert_array_equal(slide.levels[level].compute(), e)
            np.testing.assert_array_equal(slide.read_region(1, (100, 200, 128, 256)), expect[1][100:228, 200:456])
            assert slide.best_level_for_mpp(1.0) == 1


def test_dicom_errors_name_the_path(series, tmp_path):
    fake = tmp_path / "notdicom"
    fake.mkdir()
    (fake / "a.dcm").write_bytes(b"\0" * 128 + b"NOPE" + b"\0" * 64)
    with pytest.raises(SlideError, match="notdicom"):
        open_slide(fake)
    with pytest.raises(SlideError, match="read through OpenSlide"):
        open_slide(series["folder"], backend="tifffile")


def test_napari_reader_takes_dicom_folder_and_file(series):
    folder = series["folder"]
    for path in (folder, next(folder.glob("*.dcm"))):
        reader = napari_get_reader(str(path))
        assert callable(reader)
        [(data, kwargs, kind)] = reader(str(path))
        assert kind == "image" and kwargs["rgb"] and len(data) == 3
        assert kwargs["scale"] == (0.5, 0.5) and kwargs["units"] == ("um", "um")
    assert kwargs["metadata"]["slide"].backend == "dicom"


def test_viewer_opens_a_dicom_folder(make_napari_viewer, series):
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(series["folder"]), plugin="napari-dfa")
    assert layer.name == "case_dicom" and layer.rgb and layer.multiscale
    assert tuple(layer.scale) == (0.5, 0.5)
    with open_slide(series["svs"]) as svs:
        np.testing.assert_array_equal(np.asarray(layer.data[2]), svs.levels[2].compute())
