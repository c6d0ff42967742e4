"""Slides that are not plain 2-D RGB: a Z-stack or T-series says which plane is read; two channels
that are not grey + alpha are refused instead of being drawn as grey over a fake alpha."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_dfa.slide import SlideLayoutError, open_slide


@pytest.mark.parametrize("axis,words", [("Z", "5 focal planes (a Z-stack); reading Z=0 only"),
                                        ("T", "5 time points (a T-series); reading T=0 only")])
def test_a_stack_says_which_plane_is_read(tmp_path, caplog, axis, words):
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 256, (5, 64, 80, 3), dtype=np.uint8)
    path = tmp_path / f"{axis}.ome.tif"
    tifffile.imwrite(path, planes, photometric="rgb", metadata={"axes": f"{axis}YXS"})
    with caplog.at_level(logging.WARNING):
        slide = open_slide(path)
    assert f"{path.name}: {words}" in caplog.text
    assert slide.metadata["planes"] == [words + ", the first"]
    np.testing.assert_array_equal(slide.levels[0].compute(), planes[0])


def test_two_channels_without_alpha_are_refused(tmp_path):
    two = np.zeros((64, 64, 2), np.uint8)
    tifffile.imwrite(tmp_path / "two.tif", two, photometric="minisblack", planarconfig="contig")
    with pytest.raises(SlideLayoutError, match=r"two\.tif: 2 channels .*not a brightfield slide"):
        open_slide(tmp_path / "two.tif")
    tifffile.imwrite(tmp_path / "c2.ome.tif", two.transpose(2, 0, 1).copy(), photometric="minisblack",
                     metadata={"axes": "CYX"})
    with pytest.raises(SlideLayoutError, match="2 channels"):
        open_slide(tmp_path / "c2.ome.tif")


def test_grey_plus_alpha_is_still_read(tmp_path):
    grey = np.full((32, 32), 100, np.uint8)
    alpha = np.full((32, 32), 255, np.uint8)
    alpha[:4, :4] = 0
    la = np.dstack([grey, alpha])
    tifffile.imwrite(tmp_path / "la.tif", la, photometric="minisblack", extrasamples=["unassalpha"])
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    for name in ("la.tif", "la.png"):
        got = open_slide(tmp_path / name).levels[0].compute()
        assert (got[4:, 4:] == 100).all() and (got[:4, :4] == 255).all(), name
