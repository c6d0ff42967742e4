"""One level rule and one level-0 → level region conversion (napari_dfa.slide.levels): the CLI
(predict's --region with --level auto) and the GUI (the widgets' LayerPyramid over a layer of our
reader) pick the same level and crop a level-0 ROI to the same pixels of it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from napari_dfa.errors import ConfigError, DataError
from napari_dfa.slide import auto_level, open_slide, region_to_level

# Level 0 of each test slide; odd and not square, so that the levels' Y and X ratios differ a little
# (2051 / 1025 vs 1537 / 768), as in scanners' pyramids.
SHAPES = {"flat": (2051, 1537), "pyramid": (1200, 1000)}


def _write(path, kind: str):
    """A slide of zeros at 0.25 µm/px: a flat TIFF (its levels made by halving) or a stored pyramid
    whose level 1 is rounded up, as a scanner may."""
    import tifffile

    h, w = SHAPES[kind]
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((h, w, 3), np.uint8), tile=(256, 256), compression="zlib", photometric="rgb",
                  resolution=(4e4, 4e4), resolutionunit="CENTIMETER", subifds=1 if kind == "pyramid" else 0)
        if kind == "pyramid":
            tif.write(np.zeros((-(-h // 3), -(-w // 3), 3), np.uint8), tile=(256, 256), compression="zlib",
                      photometric="rgb", subfiletype=1)
    return path


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("levels")
    opened = {kind: open_slide(_write(root / f"{kind}.tif", kind)) for kind in SHAPES}
    yield opened
    for slide in opened.values():
        slide.close()


def _pyramid(slide):
    """The GUI's view of the slide: the layer our reader makes, as the widgets wrap it."""
    from napari.layers import Image

    from napari_dfa._reader import layer_data
    from napari_dfa._widgets._layers import LayerPyramid

    data, kwargs, _ = layer_data(slide)
    return LayerPyramid(Image(data, **kwargs))


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(sorted(SHAPES)), level=st.integers(0, 2), y=st.floats(0, 1), x=st.floats(0, 1),
       h=st.integers(1, 900), w=st.integers(1, 900))
@example(kind="flat", level=2, y=1.0, x=1.0, h=1, w=1)  # one pixel in the last corner
@example(kind="pyramid", level=1, y=0.5, x=0.5, h=2, w=2)
def test_the_cli_and_the_gui_crop_a_roi_to_the_same_level_pixels(slides, kind, level, y, x, h, w):
    from napari_dfa.commands.predict import level_and_region

    slide = slides[kind]
    level = min(level, len(slide.levels) - 1)
    H, W = slide.shape
    roi = (int(y * (H - 1)), int(x * (W - 1)), h, w)
    roi = (roi[0], roi[1], min(h, H - roi[0]), min(w, W - roi[1]))
    model_mpp = slide.level_mpp(level)  # a model trained at this level's pixel size

    gui = _pyramid(slide)
    assert gui.level_for(model_mpp, roi) == level
    ds, (lh, lw) = slide.downsamples[level], slide.levels[level].shape[:2]
    if math.floor(roi[0] / ds) >= lh or math.floor(roi[1] / ds) >= lw:
        # Rows or columns halving dropped (an odd last one): no pixel of the level covers them.
        with pytest.raises(ConfigError, match="outside"):
            level_and_region(slide, model_mpp, "auto", roi)
        with pytest.raises(DataError, match="outside"):
            gui.to_level(level, roi)
        return
    cli_level, cli_box = level_and_region(slide, model_mpp, "auto", roi)
    assert cli_level == level
    assert gui.to_level(level, roi) == cli_box

    # The box covers the ROI (floor the start, ceil the end), and no more than that.
    by, bx, bh, bw = cli_box
    assert by == math.floor(roi[0] / ds) and bx == math.floor(roi[1] / ds)
    assert by + bh == min(lh, math.ceil((roi[0] + roi[2]) / ds))
    assert bx + bw == min(lw, math.ceil((roi[1] + roi[3]) / ds))


def test_the_level_rule_is_the_same_for_a_slide_and_its_layer(slides):
    for slide in slides.values():
        gui = _pyramid(slide)
        assert gui.downsamples == slide.downsamples
        for mpp in (0.2, 0.25, 0.4, 0.6, 1.0, 5.0):
            assert auto_level(slide, mpp) == gui.level_for(mpp) == slide.best_level_for_mpp(mpp)
        assert auto_level(slide, None) == 0


@pytest.mark.parametrize("region0,ds,shape,pad,box", [
    ((0, 0, 10, 10), 4.0, (100, 100), 0, (0, 0, 3, 3)),       # a part-covered last pixel is kept
    ((5, 7, 1, 1), 4.0, (100, 100), 0, (1, 1, 1, 1)),         # less than one level pixel: one
    ((8, 8, 8, 8), 4.0, (100, 100), 0, (2, 2, 2, 2)),         # aligned: exactly
    ((8, 8, 8, 8), 4.0, (100, 100), 1, (1, 1, 4, 4)),         # padded
    ((-40, 390, 100, 100), 4.0, (100, 100), 0, (0, 97, 15, 3)),  # clipped to the level
    ((500, 0, 10, 10), 4.0, (100, 100), 0, None),             # beside it: nothing
    ((100.5, 200.25, 300, 160), 2.0, (1000, 1000), 0, (50, 100, 151, 81)),
])
def test_region_to_level_floors_the_start_and_ceils_the_end(region0, ds, shape, pad, box):
    assert region_to_level(region0, ds, shape, pad) == box
