"""The napari reader: which paths it takes, the layer it builds, and what the user sees in a viewer."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_dfa import SlideError
from napari_dfa._reader import napari_get_reader, read_slide
from napari_dfa.slide._arrays import GuardedArray
from slide_files import MPP, tissue, write_svs


@pytest.fixture(scope="module")
def big_svs(tmp_path_factory):
    """A 3072×2560 SVS (levels 1, 2, 4) with tissue in the middle."""
    path = tmp_path_factory.mktemp("reader") / "biopsy.svs"
    write_svs(path, tissue(3072, 2560, seed=5))
    return path


def test_get_reader_takes_slides_and_refuses_the_rest(tmp_path, big_svs):
    assert callable(napari_get_reader(str(big_svs)))
    assert callable(napari_get_reader([str(big_svs)]))
    assert napari_get_reader([str(big_svs), str(big_svs)]) is None  # a stack is not one slide
    (tmp_path / "notes.txt").write_text("x")
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    (tmp_path / "folder").mkdir()
    assert napari_get_reader(str(tmp_path / "folder")) is None
    (tmp_path / "img.zarr").mkdir()  # a broken store is ours to report
    assert callable(napari_get_reader(str(tmp_path / "img.zarr")))
    # readable images that are no slide are left to other readers
    tifffile.imwrite(tmp_path / "zstack.tif", np.zeros((5, 64, 64), np.uint8))
    assert napari_get_reader(str(tmp_path / "zstack.tif")) is None
    tifffile.imwrite(tmp_path / "fluo.ome.tif", np.zeros((7, 64, 64), np.uint16), metadata={"axes": "CYX"})
    assert napari_get_reader(str(tmp_path / "fluo.ome.tif")) is None


def test_layer_data_is_lazy_multiscale_rgb_in_microns(big_svs, monkeypatch):
    reads = []
    original = GuardedArray.__getitem__
    monkeypatch.setattr(GuardedArray, "__getitem__", lambda self, key: reads.append(key) or original(self, key))
    [(data, kwargs, kind)] = napari_get_reader(str(big_svs))(str(big_svs))
    assert reads == []  # building the layer reads no pixel
    assert kind == "image"
    assert isinstance(data, list) and [d.shape for d in data][:3] == [(3072, 2560, 3), (1536, 1280, 3), (768, 640, 3)]
    assert kwargs["rgb"] is True and kwargs["multiscale"] is True
    assert kwargs["contrast_limits"] == (0, 255)
    assert kwargs["scale"] == pytest.approx((MPP, MPP))
    assert kwargs["name"] == "biopsy"
    assert kwargs["metadata"]["mpp"] == pytest.approx(MPP)
    assert kwargs["metadata"]["slide"].path == big_svs
    np.testing.assert_array_equal(data[2][:100, :100].compute(), tifffile.imread(big_svs, level=2)[:100, :100])


def test_single_small_image_is_one_array_without_scale(tmp_path):
    tifffile.imwrite(tmp_path / "small.tif", tissue(300, 200))
    [(data, kwargs, _)] = read_slide(str(tmp_path / "small.tif"))
    assert not isinstance(data, list) and data.shape == (300, 200, 3)
    assert kwargs["multiscale"] is False and "scale" not in kwargs


def test_ome_zarr_layer_is_named_without_suffix(tmp_path):
    import zarr

    zarr.create_array(tmp_path / "case 7.ome.zarr", data=tissue(200, 300), chunks=(100, 100, 3))
    [(data, kwargs, _)] = read_slide(str(tmp_path / "case 7.ome.zarr"))
    assert kwargs["name"] == "case 7" and data.shape == (200, 300, 3)


def test_bad_file_is_a_notification_not_an_exception(tmp_path):
    from napari.utils.notifications import notification_manager

    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + b"\xff" * 64)
    before = len(notification_manager.records)
    assert read_slide(str(bad)) == [(None,)]  # napari's "no layer" value
    messages = [str(n.message) for n in notification_manager.records[before:]]
    assert any("broken.svs" in m for m in messages), messages


@pytest.mark.gui
def test_viewer_opens_slide_and_shows_tissue(make_napari_viewer, big_svs, monkeypatch, qtbot):
    reads = []
    original = GuardedArray.__getitem__

    def counting(self, key):
        reads.append((self._what, key))
        return original(self, key)

    monkeypatch.setattr(GuardedArray, "__getitem__", counting)
    viewer = make_napari_viewer(show=True)
    [layer] = viewer.open(str(big_svs), plugin="napari-dfa")
    assert layer.multiscale and layer.rgb and len(layer.data) == 3
    assert tuple(layer.scale) == pytest.approx((MPP, MPP))
    assert layer.name == "biopsy"
    qtbot.wait(200)
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    # tissue colour (pink stroma, purple nuclei) is on screen, and the picture is not uniform
    pink = (np.abs(shot - (224, 140, 185)).max(axis=-1) < 30).mean()
    assert pink > 0.05, f"only {pink:.1%} of the canvas shows tissue"
    assert shot.std() > 20
    # napari drew from the coarse level: level 0 (7.9 Mpx) was not read as a whole
    level0 = sum((k[0].stop - k[0].start) * (k[1].stop - k[1].start) for what, k in reads if what == "level 0")
    assert level0 < 0.25 * 3072 * 2560


@pytest.mark.gui
def test_viewer_survives_a_bad_file(make_napari_viewer, tmp_path):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    bad = tmp_path / "notes.tif"
    bad.write_text("not an image")
    before = len(notification_manager.records)
    assert viewer.open(str(bad), plugin="napari-dfa") == []
    assert len(viewer.layers) == 0
    assert any("notes.tif" in str(n.message) for n in notification_manager.records[before:])


@pytest.mark.gui
def test_damaged_tile_is_drawn_as_placeholder_with_one_notification(make_napari_viewer, big_svs, tmp_path):
    """A corrupt tile found while panning: napari keeps drawing, the user is told once, by file name."""
    from napari.utils.notifications import notification_manager

    data = bytearray(big_svs.read_bytes())
    with tifffile.TiffFile(big_svs) as tif:
        page = tif.pages[0]
        i = 5 * 10 + 5  # 256-px tiles, 10 per row: the tile at pixels (1280..1536, 1280..1536)
        offset, count = page.dataoffsets[i], page.databytecounts[i]
    data[offset + 4 : offset + count - 4] = b"\xa5" * (count - 8)
    bad = tmp_path / "damaged.svs"
    bad.write_bytes(bytes(data))

    viewer = make_napari_viewer(show=True)
    [layer] = viewer.open(str(bad), plugin="napari-dfa")
    before = len(notification_manager.records)
    viewer.scene.camera.center = (1400 * MPP, 1400 * MPP)
    viewer.scene.camera.zoom = 4 / MPP  # 4 screen pixels per level-0 pixel: napari reads level 0
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    assert layer.data_level == 0
    viewer.scene.camera.center = (1300 * MPP, 1500 * MPP)  # another view of the same damaged chunk
    viewer.screenshot(canvas_only=True, flash=False)
    told = [str(n.message) for n in notification_manager.records[before:] if "damaged.svs" in str(n.message)]
    assert len(told) == 1 and "corrupt" in told[0]
    # the checkerboard's two greys are on screen
    grey = (np.abs(shot - 160).max(axis=-1) < 4).mean() + (np.abs(shot - 96).max(axis=-1) < 4).mean()
    assert grey > 0.2
    # the Slide behind the layer still refuses to hand the damaged pixels to analysis
    with pytest.raises(SlideError, match="damaged.svs"):
        layer.metadata["slide"].read_region(0, (1280, 1280, 256, 256))
