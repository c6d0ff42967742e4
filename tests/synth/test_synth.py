"""Synthetic H&E data: deterministic, frequencies as configured, difficulty that a classifier feels,
a dataset in the SAM-Path layout and a real pyramidal slide with aligned truth."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy.ndimage import uniform_filter

from napari_dfa.cli import main
from napari_dfa.errors import ConfigError
from napari_dfa.synth import DATASET_CSV, DATASET_JSON, SynthConfig, generate_tile, write_dataset, write_slide

K = 5  # inflammatory, tumour, stroma, other, necrosis


def test_tile_is_deterministic_by_seed():
    a_rgb, a_mask = generate_tile(SynthConfig(), 7, size=128)
    b_rgb, b_mask = generate_tile(SynthConfig(), 7, size=128)
    c_rgb, c_mask = generate_tile(SynthConfig(), 8, size=128)
    assert a_rgb.dtype == np.uint8 and a_rgb.shape == (128, 128, 3)
    assert a_mask.dtype == np.uint8 and a_mask.shape == (128, 128)
    assert np.array_equal(a_rgb, b_rgb) and np.array_equal(a_mask, b_mask)
    assert not np.array_equal(a_rgb, c_rgb)
    assert set(np.unique(a_mask)) <= set(range(K + 1))
    # H&E, not noise: eosin-pink dominates (red > green) and the image has real contrast.
    assert a_rgb[..., 0].mean() > a_rgb[..., 1].mean() + 20
    assert a_rgb.std() > 20


def test_config_from_dict_and_toml(tmp_path):
    cfg = SynthConfig.from_dict({"ignore_fraction": 0.2, "classes": {"necrosis": {"difficulty": 0.1}}})
    assert cfg.ignore_fraction == 0.2
    assert cfg.classes[4].difficulty == 0.1 and cfg.classes[4].lookalike == "tumour"
    assert cfg.classes[0] == SynthConfig().classes[0]  # untouched classes keep their defaults
    assert SynthConfig.from_dict(cfg.to_dict()) == cfg

    toml = tmp_path / "synth.toml"
    toml.write_text('[synth]\nborder_blur = 4\n[synth.classes.stroma]\ndifficulty = 0.9\nlookalike = "tumour"\n')
    cfg = SynthConfig.from_toml(toml)
    assert cfg.border_blur == 4 and cfg.classes[2].difficulty == 0.9 and cfg.classes[2].lookalike == "tumour"


@pytest.mark.parametrize(
    "data, words",
    [
        ({"colour": 1}, ["unknown", "colour"]),
        ({"classes": {"tumour": {"frequency": 0.5}}}, ["sum to 1.15"]),
        ({"classes": {"stroma": {"difficulty": 1.5}}}, ["stroma", "difficulty"]),
        ({"classes": {"stroma": {"lookalike": "bone"}}}, ["stroma", "bone"]),
        ({"classes": {"stroma": {"sparkle": 1}}}, ["stroma", "sparkle"]),
    ],
)
def test_bad_config_is_refused_by_name(data, words):
    with pytest.raises(ConfigError) as exc:
        SynthConfig.from_dict(data, source="my.toml")
    for word in ["my.toml", *words]:
        assert word in str(exc.value)


def test_bad_toml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[synth\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        SynthConfig.from_toml(bad)
    with pytest.raises(ConfigError, match="missing.toml"):
        SynthConfig.from_toml(tmp_path / "missing.toml")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_ds")
    write_dataset(root, SynthConfig(), n_train=16, n_val=4, n_test=4, tile=128, seed=1)
    return root


def test_dataset_layout_is_sampath(dataset):
    with open(dataset / DATASET_CSV, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["img_id", "fold"]
    folds = [int(f) for _, f in rows[1:]]
    assert folds.count(-1) == 4 and folds.count(0) == 4 and sum(f >= 1 for f in folds) == 16
    assert set(f for f in folds if f >= 1) == {1, 2, 3, 4}
    for img_id, _ in rows[1:]:
        img = Image.open(dataset / "img" / f"{img_id}.png")
        mask = Image.open(dataset / "mask" / f"{img_id}.png")
        assert img.mode == "RGB" and img.size == (128, 128)
        assert mask.mode == "L" and mask.size == (128, 128)
        assert np.asarray(mask).max() <= K
    info = json.loads((dataset / DATASET_JSON).read_text())
    assert [c["name"] for c in info["classes"]] == ["inflammatory", "tumour", "stroma", "other", "necrosis"]
    assert info["classes"][1]["color"] == [230, 40, 40]


def test_dataset_reads_through_the_training_loader(dataset):
    from napari_dfa.classes import SYNTHETIC
    from napari_dfa.training.datasets import SamPathDataset

    for split, n in (("train", 16), ("val", 4), ("test", 4)):
        ds = SamPathDataset(dataset, split=split, class_set=SYNTHETIC)
        assert len(ds) == n
    rgb, mask = SamPathDataset(dataset, split="val", class_set=SYNTHETIC)[0]
    assert np.asarray(rgb).shape == (128, 128, 3) and np.asarray(mask).shape == (128, 128)


def test_dataset_frequencies_match_the_config(dataset):
    counts = np.zeros(K + 1)
    for p in sorted((dataset / "mask").glob("*.png")):
        counts += np.bincount(np.asarray(Image.open(p)).ravel(), minlength=K + 1)[: K + 1]
    measured = counts[1:] / counts[1:].sum()
    expected = np.array(SynthConfig().frequencies)
    assert np.abs(measured - expected).max() < 0.03, (measured, expected)
    assert abs(counts[0] / counts.sum() - SynthConfig().ignore_fraction) < 0.03
    info = json.loads((dataset / DATASET_JSON).read_text())
    assert np.allclose([c["measured_frequency"]["all"] for c in info["classes"]], measured)


def _colour_dice(config: SynthConfig, n: int = 10, size: int = 192) -> np.ndarray:
    """Per-class Dice of a per-pixel colour classifier (Gaussian per class on the local mean optical
    density in a 15-px window), trained on n tiles and scored on n others."""

    def features(seed_base):
        xs, ys = [], []
        for i in range(n):
            rgb, mask = generate_tile(config, (seed_base, i), size=size, proportions=config.frequencies)
            od = -np.log(np.maximum(rgb.astype(np.float32), 1) / 255)
            xs.append(np.stack([uniform_filter(od[..., c], 15) for c in range(3)], -1).reshape(-1, 3))
            ys.append(mask.ravel())
        return np.concatenate(xs), np.concatenate(ys)

    x, y = features(100)
    xt, yt = features(200)
    scores = []
    for k in range(1, K + 1):
        mu, cov = x[y == k].mean(0), np.cov(x[y == k].T) + 1e-6 * np.eye(3)
        d = xt - mu
        scores.append(-0.5 * np.einsum("ij,jk,ik->i", d, np.linalg.inv(cov), d) - 0.5 * np.linalg.slogdet(cov)[1])
    pred = np.argmax(scores, axis=0) + 1
    valid = yt > 0
    return np.array([
        2 * ((pred == k) & (yt == k)).sum() / (((pred == k) & valid).sum() + (yt == k).sum()) for k in range(1, K + 1)
    ])


def test_hard_class_is_harder_than_easy_class_of_same_frequency():
    config = SynthConfig()
    names = config.class_names
    infl, necr = names.index("inflammatory"), names.index("necrosis")
    assert config.frequencies[infl] == config.frequencies[necr] == 0.05
    dice = _colour_dice(config)
    # Rare and easy (dense dark lymphocytes) vs rare and hard (tumour look-alike debris).
    assert dice[infl] > dice[necr] + 0.2, dice
    # Same frequency, difficulty 0: necrosis becomes much easier, so difficulty (not rarity) did it.
    easy_necrosis = SynthConfig.from_dict({"classes": {"necrosis": {"difficulty": 0.0}}})
    dice_easy = _colour_dice(easy_necrosis)
    assert dice_easy[necr] > dice[necr] + 0.15, (dice_easy, dice)


def test_border_blur_makes_a_hard_class_harder():
    """The second half of difficulty: a hard class's borders blur by difficulty × border_blur px."""
    stroma = SynthConfig().class_names.index("stroma")  # difficulty 0.6
    sharp = _colour_dice(SynthConfig.from_dict({"border_blur": 0}), n=6)
    blurred = _colour_dice(SynthConfig.from_dict({"border_blur": 25}), n=6)
    assert blurred[stroma] < sharp[stroma] - 0.1, (sharp, blurred)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_slide") / "slide.tif"
    return write_slide(out, SynthConfig(), size=(1100, 1300), seed=3)


def test_slide_is_a_real_svs_pyramid(slide):
    path, truth = slide
    assert truth.name == "slide_truth.tif"
    with tifffile.TiffFile(path) as tif:
        assert tif.is_svs
        assert "MPP = 0.5" in tif.pages[0].description
        levels = tif.series[0].levels
        assert [lv.shape[:2] for lv in levels] == [(1100, 1300), (550, 650), (275, 325)]
        assert all(lv.keyframe.is_tiled and lv.keyframe.tilewidth == 256 for lv in levels)
        l0, l1 = levels[0].asarray(), levels[1].asarray()
    assert l0.shape == (1100, 1300, 3) and l0.dtype == np.uint8
    # Level 1 is level 0 reduced 2x2 (JPEG: a few grey levels apart at most on average).
    reduced = l0.reshape(550, 2, 650, 2, 3).mean(axis=(1, 3))
    assert np.abs(reduced - l1).mean() < 4


def test_slide_truth_is_aligned(slide):
    path, truth = slide
    with tifffile.TiffFile(truth) as tif:
        levels = tif.series[0].levels
        t0, t1 = levels[0].asarray(), levels[1].asarray()
        assert tif.shaped_metadata[0]["class_names"][4] == "necrosis"
    rgb = tifffile.imread(path)
    assert t0.shape == rgb.shape[:2] and t1.shape == (550, 650)
    assert np.array_equal(t0[::2, ::2], t1)  # lower truth levels are nearest samples of level 0
    counts = np.bincount(t0.ravel(), minlength=K + 1)
    assert 0.15 < counts[0] / t0.size < 0.5  # glass around an irregular tissue section
    tissue_freq = counts[1:] / counts[1:].sum()
    assert np.abs(tissue_freq - np.array(SynthConfig().frequencies)).max() < 0.05
    # What the user sees matches the truth: glass is bright, lymphocytes darkest, stroma pink.
    grey = rgb.mean(axis=2)
    assert grey[t0 == 0].mean() > 225
    assert grey[t0 == 1].mean() < grey[t0 == 3].mean() - 25
    assert rgb[t0 == 3][:, 0].mean() > rgb[t0 == 3][:, 1].mean() + 30


def test_slide_reads_through_open_slide_and_openslide(slide):
    from napari_dfa.slide import open_slide

    path, _ = slide
    s = open_slide(path)
    assert s.mpp == pytest.approx(0.5)
    assert s.downsamples[:2] == [1.0, 2.0]
    region = s.read_region(0, (300, 400, 64, 80))
    assert np.array_equal(region, tifffile.imread(path)[300:364, 400:480])
    s.close()
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(str(path)) as osl:
        assert float(osl.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert osl.level_dimensions[0] == (1300, 1100)


def test_slide_windows_are_seamless():
    """A window of the slide does not depend on where rendering was cut (no seams between tiles)."""
    from napari_dfa.synth.writers import _SlidePlan

    plan = _SlidePlan(SynthConfig(), (1024, 1024), seed=5)
    big = plan.rgb(300, 300, 384, 384)
    small = plan.rgb(300 + 130, 300 + 70, 160, 200)
    assert np.array_equal(big[130:290, 70:270], small)
    assert np.array_equal(plan.labels(300, 300, 384, 384)[130:290, 70:270], plan.labels(430, 370, 160, 200))


def test_cli_synth_dataset_and_slide(tmp_path, capsys):
    assert main(["synth", "dataset", str(tmp_path / "ds"), "--train", "2", "--val", "1", "--test", "1",
                 "--tile", "64", "--seed", "4", "--no-progress"]) == 0
    assert len(list((tmp_path / "ds" / "img").glob("*.png"))) == 4
    assert (tmp_path / "ds" / DATASET_CSV).read_text().startswith("img_id,fold")
    assert main(["synth", "slide", str(tmp_path / "s.tif"), "--size", "300x400", "--no-progress"]) == 0
    assert tifffile.imread(tmp_path / "s.tif").shape == (300, 400, 3)
    assert tifffile.imread(tmp_path / "s_truth.tif").shape == (300, 400)
    assert "wrote" in capsys.readouterr().out


def test_cli_synth_reports_bad_input(tmp_path, capsys):
    assert main(["synth", "slide", str(tmp_path / "s.tif"), "--size", "big", "--no-progress"]) == 1
    assert "--size 'big'" in capsys.readouterr().err
    bad = tmp_path / "cfg.toml"
    bad.write_text("[synth]\nignore_fraction = 2\n")
    assert main(["synth", "dataset", str(tmp_path / "ds"), "--config", str(bad), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "cfg.toml" in err and "ignore_fraction" in err


def test_slide_writing_can_be_cancelled_and_leaves_nothing(tmp_path):
    from napari_dfa.errors import Cancelled

    calls = []

    def progress(done, total):
        calls.append((done, total))

    with pytest.raises(Cancelled, match="s.tif"):
        write_slide(tmp_path / "s.tif", size=(1100, 600), progress=progress, cancel=lambda: len(calls) >= 1)
    assert calls == [(1, 3)]  # one 512-row band rendered, then the cancel was seen
    assert list(tmp_path.iterdir()) == []  # no half-written slide, truth or scratch files


def test_dataset_progress_and_bad_arguments(tmp_path):
    seen = []
    write_dataset(tmp_path / "ds", n_train=2, n_val=1, n_test=0, tile=64, seed=0,
                  progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(ConfigError, match="at least one"):
        write_dataset(tmp_path / "empty", n_train=0, n_val=0, n_test=0)
    with pytest.raises(ConfigError, match="too small"):
        write_slide(tmp_path / "tiny.tif", size=(32, 32))
