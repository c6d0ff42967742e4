"""open_slide on real file layouts written here with tifffile, zarr, ome-zarr and Pillow.

Pixels are compared with the writers' own arrays / tifffile's own reading, level by level and
region by region; bad files must give SlideError naming the file, also lazily inside dask.
"""

from __future__ import annotations

import pickle
import sys

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_dfa import SlideError, open_slide
from napari_dfa.slide._arrays import GuardedArray

from slide_files import MPP, pyramid, tissue, write_svs


@pytest.fixture(scope="module")
def img():
    return tissue(1536, 1280)


@pytest.fixture(scope="module")
def svs(tmp_path_factory, img):
    path = tmp_path_factory.mktemp("svs") / "case.svs"
    write_svs(path, img)
    return path


def assert_regions_match(slide, level, ref, regions):
    for y0, x0, h, w in regions:
        got = slide.read_region(level, (y0, x0, h, w))
        np.testing.assert_array_equal(got, ref[y0 : y0 + h, x0 : x0 + w])


# --- formats --------------------------------------------------------------------------------------


def test_svs_levels_mpp_and_metadata(svs):
    slide = open_slide(svs)
    assert slide.backend == "tifffile"
    assert slide.mpp == pytest.approx(MPP)
    assert slide.metadata["vendor"] == "aperio"
    assert slide.metadata["objective_power"] == 20
    assert {"label", "macro", "thumbnail"} <= set(slide.metadata["associated_images"])
    assert slide.shape == (1536, 1280)
    # 3 stored levels (the thumbnail is not one), then halved down to <= 1024 px: none needed here
    assert [lv.shape for lv in slide.levels] == [(1536, 1280, 3), (768, 640, 3), (384, 320, 3)]
    assert slide.downsamples == [1.0, 2.0, 4.0]
    for level in range(3):
        assert slide.levels[level].dtype == np.uint8
        ref = tifffile.imread(svs, series=0, level=level)
        np.testing.assert_array_equal(slide.levels[level].compute(), ref)
    ref0 = tifffile.imread(svs, series=0, level=0)
    assert_regions_match(slide, 0, ref0, [(0, 0, 300, 200), (1000, 700, 536, 580), (255, 257, 2, 3)])
    assert slide.level_mpp(2) == pytest.approx(4 * MPP)
    assert slide.best_level_for_mpp(2.0) == 2
    assert slide.best_level_for_mpp(0.9) == 1
    assert slide.best_level_for_mpp(0.25) == 0
    slide.close()


def test_ome_tiff_subifd_pyramid_with_nanometre_pixel_size(tmp_path, img):
    path = tmp_path / "case.ome.tif"
    levels = pyramid(img, 3)
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        tw.write(levels[0], tile=(256, 256), photometric="rgb", compression="zlib", subifds=2,
                 metadata={"axes": "YXS", "PhysicalSizeX": 250.0, "PhysicalSizeXUnit": "nm",
                           "PhysicalSizeY": 250.0, "PhysicalSizeYUnit": "nm"})
        for lv in levels[1:]:
            tw.write(lv, tile=(256, 256), photometric="rgb", compression="zlib", subfiletype=1)
    slide = open_slide(path)
    assert slide.metadata["vendor"] == "ome"
    assert slide.mpp == pytest.approx(0.25)
    assert len(slide.levels) == 3 and slide.downsamples == [1.0, 2.0, 4.0]
    for level, ref in enumerate(levels):
        np.testing.assert_array_equal(slide.levels[level].compute(), tifffile.imread(path, level=level))
        np.testing.assert_array_equal(slide.levels[level].compute(), ref)
    assert_regions_match(slide, 1, levels[1], [(100, 100, 256, 300), (700, 600, 68, 40)])


def test_ome_tiff_main_image_is_picked_over_the_macro(tmp_path, img):
    """Bio-Formats writes the slide's macro photo as another OME image; it must not be opened."""
    path = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(img[:200, :300], photometric="rgb", metadata={"axes": "YXS", "Name": "macro image"})
        tw.write(img, tile=(256, 256), photometric="rgb", metadata={"axes": "YXS", "Name": "slide"})
    slide = open_slide(path)
    assert slide.shape == img.shape[:2]
    assert "macro image" in slide.metadata["associated_images"]
    np.testing.assert_array_equal(slide.levels[0].compute(), img)


def test_reduced_pages_pyramid_with_cm_resolution(tmp_path, img):
    path = tmp_path / "generic.tif"
    levels = pyramid(img, 3)
    # 40000 px/cm = 0.25 µm/px, as scanners write it in the TIFF resolution tags
    with tifffile.TiffWriter(path) as tw:
        for i, lv in enumerate(levels):
            tw.write(lv, tile=(128, 128), photometric="rgb", compression="zlib", metadata=None,
                     subfiletype=1 if i else 0, resolution=(40000 / 2**i, 40000 / 2**i), resolutionunit="CENTIMETER")
    slide = open_slide(path)
    assert slide.metadata["vendor"] == "generic-tiff"
    assert slide.mpp == pytest.approx(0.25)
    assert len(slide.levels) == 3
    for level in range(3):
        np.testing.assert_array_equal(slide.levels[level].compute(), tifffile.imread(path, level=level))


@pytest.mark.parametrize("tiled", [False, True], ids=["striped-memmap", "tiled-jpeg"])
def test_flat_bigtiff_gets_a_lazy_pyramid(tmp_path, tiled):
    img = tissue(2600, 2100, seed=1)
    path = tmp_path / "flat.tif"
    kw = dict(tile=(256, 256), compression="jpeg") if tiled else {}
    tifffile.imwrite(path, img, bigtiff=True, photometric="rgb", resolution=(101600, 101600),
                     resolutionunit="INCH", **kw)  # 101600 dpi = 0.25 µm/px
    ref0 = tifffile.imread(path)
    slide = open_slide(path)
    assert slide.mpp == pytest.approx(0.25)
    # 2600 -> 1300 -> 650: halved until the longer side is <= 1024
    assert [lv.shape for lv in slide.levels] == [(2600, 2100, 3), (1300, 1050, 3), (650, 525, 3)]
    assert slide.downsamples == [1.0, 2.0, 4.0]
    np.testing.assert_array_equal(slide.levels[0].compute(), ref0)
    # each level is the rounded mean of 2×2 blocks of the level above
    expect = ref0.astype(np.uint16)
    for level in (1, 2):
        h, w = expect.shape[0] // 2 * 2, expect.shape[1] // 2 * 2
        e = expect[:h, :w]
        expect = (e[0::2, 0::2] + e[1::2, 0::2] + e[0::2, 1::2] + e[1::2, 1::2] + 2) // 4
        np.testing.assert_array_equal(slide.levels[level].compute(), expect.astype(np.uint8))
    assert_regions_match(slide, 0, ref0, [(2500, 2000, 100, 100), (1024, 3, 5, 1500)])


def test_ome_zarr_ngff05_from_ome_zarr_writer_cyx(tmp_path, img):
    from ome_zarr.writer import write_image

    path = tmp_path / "case.ome.zarr"
    cyx = np.ascontiguousarray(img.transpose(2, 0, 1))
    root = zarr.open_group(path, mode="w")
    write_image(cyx, root, axes="cyx", scale={"c": 1.0, "y": 0.5, "x": 0.5},
                axes_units={"y": "micrometer", "x": "micrometer"})
    slide = open_slide(path)
    assert slide.backend == "zarr"
    assert slide.metadata["vendor"] == "ome-zarr" and slide.metadata["ngff_version"] == "0.5"
    assert slide.mpp == pytest.approx(0.5)
    stored = root.attrs.asdict()["ome"]["multiscales"][0]["datasets"]
    assert len(slide.levels) == len(stored)
    for level, ds in enumerate(stored[:3]):
        ref = np.asarray(root[ds["path"]][:]).transpose(1, 2, 0)
        np.testing.assert_array_equal(slide.levels[level].compute(), ref)
    assert_regions_match(slide, 0, img, [(10, 20, 300, 400), (1400, 1200, 136, 80)])


def test_ome_zarr_ngff04_zarr_v2_tczyx_uint16(tmp_path):
    """Written by hand with plain zarr: NGFF 0.4 on zarr v2, 5-D, 16-bit with a 12-bit range."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 4096, (3, 600, 500), dtype=np.uint16)
    path = tmp_path / "v04.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2)
    datasets = []
    for i, arr in enumerate([base, base[:, ::2, ::2]]):
        root.create_array(str(i), data=arr[None, :, None], chunks=(1, 1, 1, 256, 256))
        datasets.append({"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [1, 1, 1, 0.25 * 2**i, 0.25 * 2**i]}]})
    root.attrs["multiscales"] = [{"version": "0.4", "datasets": datasets, "axes": [
        {"name": "t", "type": "time"}, {"name": "c", "type": "channel"}, {"name": "z", "type": "space"},
        {"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}]}]
    assert (path / ".zattrs").exists()
    slide = open_slide(path)
    assert slide.mpp == pytest.approx(0.25)
    assert [lv.shape for lv in slide.levels] == [(600, 500, 3), (300, 250, 3)]
    # documented scaling: 99.9th percentile of the smallest stored level -> 255
    hi = np.percentile(base[:, ::2, ::2].astype(np.float64), 99.9)
    expect = np.rint(np.clip(base.transpose(1, 2, 0).astype(np.float32) * np.float32(255.0 / hi), 0, 255))
    np.testing.assert_array_equal(slide.levels[0].compute(), expect.astype(np.uint8))
    assert slide.levels[0].compute().max() == 255  # not a dark image scaled by 65535


def test_bioformats2raw_layout_yxc_axes(tmp_path, img):
    """bioformats2raw puts the image in group "0"; axes may be y, x, c (channels last)."""
    root = zarr.open_group(tmp_path / "b2r.ome.zarr", mode="w")
    root.attrs["bioformats2raw.layout"] = 3
    image = root.create_group("0")
    image.create_array("0", data=img, chunks=(512, 512, 3))
    image.create_array("1", data=img[::2, ::2], chunks=(512, 512, 3))
    image.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "y", "type": "space", "unit": "millimeter"},
                 {"name": "x", "type": "space", "unit": "millimeter"}, {"name": "c", "type": "channel"}],
        "datasets": [{"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [0.00025 * 2**i, 0.00025 * 2**i, 1]}]} for i in range(2)]}]}
    slide = open_slide(tmp_path / "b2r.ome.zarr")
    assert slide.mpp == pytest.approx(0.25)
    np.testing.assert_array_equal(slide.levels[1].compute(), img[::2, ::2])
    assert_regions_match(slide, 0, img, [(700, 300, 100, 900)])


def test_plain_zarr_yxc_array_and_numbered_group(tmp_path, img):
    zarr.create_array(tmp_path / "yxc.zarr", data=img, chunks=(512, 512, 3))
    slide = open_slide(tmp_path / "yxc.zarr")
    assert slide.mpp is None and slide.metadata["vendor"] == "zarr"
    np.testing.assert_array_equal(slide.levels[0].compute(), img)
    assert slide.levels[1].shape == (768, 640, 3)  # 1536 > 1024: a halved level is added
    group = zarr.open_group(tmp_path / "numbered.zarr", mode="w")
    for i, lv in enumerate(pyramid(img, 2)):
        group.create_array(str(i), data=lv, chunks=(256, 256, 3))
    slide = open_slide(tmp_path / "numbered.zarr")
    np.testing.assert_array_equal(slide.levels[1].compute(), img[::2, ::2])


def test_png_rgba_and_grey_jpeg(tmp_path, img):
    rgba = np.dstack([img[:300, :400], np.full((300, 400), 255, np.uint8)])
    rgba[:10, :10, 3] = 0  # transparent corner -> white glass
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    slide = open_slide(tmp_path / "a.png")
    got = slide.levels[0].compute()
    np.testing.assert_array_equal(got[10:, 10:], img[10:300, 10:400])
    assert (got[:10, :10] == 255).all()
    grey = img[:500, :700, 1]
    Image.fromarray(grey, "L").save(tmp_path / "g.jpg", quality=95)
    slide = open_slide(tmp_path / "g.jpg")
    got = slide.levels[0].compute()
    ref = np.asarray(Image.open(tmp_path / "g.jpg"))
    assert got.shape == (500, 700, 3)
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], ref)


def test_grey_16bit_rgba_and_planar_tiffs_become_rgb_uint8(tmp_path, img):
    grey = img[:, :, 0]
    tifffile.imwrite(tmp_path / "grey.tif", grey)
    np.testing.assert_array_equal(open_slide(tmp_path / "grey.tif").levels[0].compute(), np.dstack([grey] * 3))

    tifffile.imwrite(tmp_path / "planar.tif", np.ascontiguousarray(img.transpose(2, 0, 1)),
                     photometric="rgb", planarconfig="separate", tile=(256, 256))
    np.testing.assert_array_equal(open_slide(tmp_path / "planar.tif").levels[0].compute(), img)

    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    rgba[:4, :4, 3] = 0
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    got = open_slide(tmp_path / "rgba.tif").levels[0].compute()
    np.testing.assert_array_equal(got[4:, 4:], img[4:, 4:])
    assert (got[:4, :4] == 255).all()

    # indexed colour: the TIFF ColorMap (16-bit entries) gives the RGB
    index = (grey // 32).astype(np.uint8)  # 8 colours
    cmap = np.zeros((3, 256), np.uint16)
    cmap[:, :8] = np.array([[i * 30 * 257, 255 * 257 - i * 20 * 257, 128 * 257] for i in range(8)]).T
    tifffile.imwrite(tmp_path / "palette.tif", index, photometric="palette", colormap=cmap)
    np.testing.assert_array_equal(open_slide(tmp_path / "palette.tif").levels[0].compute(),
                                  (cmap[:, index].transpose(1, 2, 0) // 257).astype(np.uint8))

    # 16-bit grey using the full 16-bit range: percentile of the whole (small) image
    g16 = (grey.astype(np.uint16) * 257)
    tifffile.imwrite(tmp_path / "g16.tif", g16)
    got = open_slide(tmp_path / "g16.tif").levels[0].compute()
    hi = np.percentile(g16.astype(np.float64), 99.9)
    expect = np.rint(np.clip(g16.astype(np.float32) * np.float32(255.0 / hi), 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(got[..., 1], expect)


# --- bad input --------------------------------------------------------------------------------


def test_missing_file_and_text_named_tif_and_empty_file(tmp_path):
    with pytest.raises(SlideError, match="nope.svs.*no such file"):
        open_slide(tmp_path / "nope.svs")
    text = tmp_path / "notes.tif"
    text.write_text("patient notes, not an image\n")
    with pytest.raises(SlideError, match=r"notes\.tif.*not a supported slide"):
        open_slide(text)
    (tmp_path / "empty.svs").write_bytes(b"")
    with pytest.raises(SlideError, match=r"empty\.svs.*empty"):
        open_slide(tmp_path / "empty.svs")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(SlideError, match=r"bad\.png"):
        open_slide(tmp_path / "bad.png")


def test_truncated_tiff_is_refused_at_open(tmp_path, svs):
    data = svs.read_bytes()
    cut = tmp_path / "cut.svs"
    with tifffile.TiffFile(svs) as tif:
        first_ifd_end = tif.pages[0].dataoffsets[0]
    cut.write_bytes(data[: len(data) // 2])
    assert len(data) // 2 > first_ifd_end  # the header survived the cut
    with pytest.raises(SlideError, match=r"cut\.svs.*truncated"):
        open_slide(cut)
    cut.write_bytes(data[:100])  # even the first IFD is gone
    with pytest.raises(SlideError, match=r"cut\.svs"):
        open_slide(cut)


def test_corrupt_tile_is_found_lazily_inside_dask(tmp_path, svs):
    data = bytearray(svs.read_bytes())
    with tifffile.TiffFile(svs) as tif:
        # tile 25 = row 5, column 0 of 256-px tiles: outside the first 1024-px dask chunk
        offset, count = tif.pages[0].dataoffsets[25], tif.pages[0].databytecounts[25]
    data[offset + 4 : offset + count - 4] = b"\xa5" * (count - 8)
    bad = tmp_path / "bad.svs"
    bad.write_bytes(bytes(data))
    slide = open_slide(bad)  # metadata is intact: opening succeeds
    np.testing.assert_array_equal(slide.read_region(0, (0, 0, 256, 256)), tifffile.imread(svs)[:256, :256])
    with pytest.raises(SlideError, match=r"bad\.svs.*level 0.*corrupt"):
        slide.levels[0].compute()
    with pytest.raises(SlideError, match=r"bad\.svs"):
        da.compute(slide.levels[0].mean())  # also through a larger graph


def test_file_cut_short_after_opening_fails_at_compute(tmp_path, svs):
    """E.g. a copy still being written when the slide was opened: the header was complete."""
    growing = tmp_path / "copying.svs"
    data = svs.read_bytes()
    growing.write_bytes(data)
    slide = open_slide(growing)
    with open(growing, "r+b") as fh:
        fh.truncate(len(data) // 3)
    with pytest.raises(SlideError, match=r"copying\.svs.*level 0"):
        slide.levels[0].compute()
    slide.close()


def test_corrupt_zarr_chunk_and_truncated_png_found_lazily(tmp_path, img):
    path = tmp_path / "c.zarr"
    root = zarr.open_group(path, mode="w")
    root.create_array("0", data=img[:512, :512], chunks=(256, 256, 3), compressors=zarr.codecs.ZstdCodec())
    chunk = path / "0" / "c" / "1" / "1" / "0"
    chunk.write_bytes(b"garbage" * 10)
    slide = open_slide(path)
    with pytest.raises(SlideError, match=r"c\.zarr"):
        slide.levels[0].compute()
    Image.fromarray(img[:600, :600]).save(tmp_path / "t.png")
    blob = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(blob[: len(blob) // 2])
    slide = open_slide(tmp_path / "t.png")  # the header is intact
    with pytest.raises(SlideError, match=r"t\.png"):
        slide.levels[0].compute()


def test_wrong_dimensions(tmp_path, img):
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([img[:64, :64]] * 5))
    with pytest.raises(SlideError, match=r"stack\.tif.*stack of 5"):
        open_slide(tmp_path / "stack.tif")
    tifffile.imwrite(tmp_path / "many.tif", np.zeros((7, 64, 64), np.uint8), photometric="minisblack",
                     planarconfig="separate", metadata={"axes": "CYX"})
    with pytest.raises(SlideError, match=r"many\.tif.*7 channels"):
        open_slide(tmp_path / "many.tif")
    zarr.create_array(tmp_path / "line.zarr", shape=(100,), dtype="uint8")
    with pytest.raises(SlideError, match=r"line\.zarr.*not an image"):
        open_slide(tmp_path / "line.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(SlideError, match=r"plain.*not a zarr"):
        open_slide(tmp_path / "plain")


# --- OpenSlide --------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["zlib", "jpeg"])
def test_openslide_and_tifffile_agree_on_svs(svs, tmp_path, img, compression):
    """Same pixels, mpp and downsamples; JPEG tiles (YCbCr, as scanners write) decode identically too."""
    pytest.importorskip("openslide", reason="the openslide extra is part of the test set-up")
    if compression == "jpeg":
        svs = tmp_path / "jpeg.svs"
        write_svs(svs, img, compression="jpeg")
    a, b = open_slide(svs, backend="tifffile"), open_slide(svs, backend="openslide")
    assert b.backend == "openslide" and b.metadata["vendor"] == "aperio"
    assert a.mpp == pytest.approx(b.mpp)
    assert a.downsamples == pytest.approx(b.downsamples)
    assert [lv.shape for lv in a.levels] == [lv.shape for lv in b.levels]
    for level in range(len(a.levels)):
        np.testing.assert_array_equal(a.levels[level].compute(), b.levels[level].compute())
    for region in [(5, 7, 300, 301), (1400, 1200, 200, 200)]:  # the last one crosses the border
        np.testing.assert_array_equal(a.read_region(0, region), b.read_region(0, region))
    b.close()


def test_openslide_refuses_a_fake_mirax(tmp_path):
    pytest.importorskip("openslide", reason="the openslide extra is part of the test set-up")
    (tmp_path / "x.mrxs").write_text("not a mirax slide")
    with pytest.raises(SlideError, match=r"x\.mrxs.*OpenSlide does not recognise"):
        open_slide(tmp_path / "x.mrxs")


def test_vendor_format_without_openslide_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "x.mrxs").write_text("a mirax index")
    monkeypatch.setitem(sys.modules, "openslide", None)  # as if the extra were not installed
    with pytest.raises(SlideError, match=r"x\.mrxs.*pip install 'napari-dfa\[openslide\]'"):
        open_slide(tmp_path / "x.mrxs")
    with pytest.raises(SlideError, match=r"x\.mrxs.*need OpenSlide"):
        open_slide(tmp_path / "x.mrxs", backend="tifffile")


# --- laziness and API -------------------------------------------------------------------------


def test_opening_reads_no_pixels_and_graphs_pickle(svs, monkeypatch):
    reads = []
    original = GuardedArray.__getitem__
    monkeypatch.setattr(GuardedArray, "__getitem__", lambda self, key: reads.append(key) or original(self, key))
    slide = open_slide(svs)
    assert reads == []
    tile = slide.read_region(0, (256, 256, 256, 256))
    assert len(reads) == 1  # one dask chunk, not the level
    # a level's graph travels to another process (dask.distributed): the file is reopened there
    level = pickle.loads(pickle.dumps(slide.levels[1]))
    np.testing.assert_array_equal(level[:256, :256].compute(), slide.levels[1][:256, :256].compute())
    copy = pickle.loads(pickle.dumps(slide))
    assert copy.mpp == slide.mpp and copy.downsamples == slide.downsamples
    np.testing.assert_array_equal(copy.read_region(2, (0, 0, 64, 64)), slide.read_region(2, (0, 0, 64, 64)))
    assert tile.shape == (256, 256, 3)


def test_read_region_pads_outside_with_white_and_checks_level(svs, img):
    slide = open_slide(svs)
    out = slide.read_region(0, (-10, 1270, 20, 20))
    assert (out[:10] == 255).all() and (out[:, 10:] == 255).all()
    np.testing.assert_array_equal(out[10:, :10], img[:10, 1270:])
    with pytest.raises(SlideError, match=r"case\.svs.*level 9"):
        slide.read_region(9, (0, 0, 1, 1))
    with pytest.raises(ValueError):
        open_slide(svs, backend="bioformats")
