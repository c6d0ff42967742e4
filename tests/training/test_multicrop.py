"""Training on several crop sizes in one run ([data] crops): large crops for a slide's context, small
ones for small tiles, each batch one size, every tile once per size and epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_dfa import synth
from napari_dfa.errors import ConfigError, DataError
from napari_dfa.model import read_checkpoint
from napari_dfa.training import TrainConfig, train
from napari_dfa.training.datasets import MultiCropBatchSampler, write_sampath

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def two_sizes(tmp_path):
    # Four 96-px tiles (large and small crops) and four 48-px tiles (small crops only).
    items = [(f"big{i}", *synth.generate_tile(seed=i, size=96), f) for i, f in enumerate([1, 1, 1, 0])]
    items += [(f"small{i}", *synth.generate_tile(seed=10 + i, size=48), 1) for i in range(4)]
    return write_sampath(tmp_path / "ds", items)


def recipe(root, **changes) -> TrainConfig:
    cfg = TrainConfig(name="m", epochs=2, batch_size=2, lr=3e-3, schedule="cosine", model={"preset": "tiny"})
    cfg = cfg.replace(data={"kind": "sampath", "root": str(root), "classes": "bcss", "crop": 64,
                            "crops": (64, 32), "crop_batch_sizes": (2, 4)})
    return cfg.replace(**changes) if changes else cfg


def test_every_tile_once_per_size_and_epoch_and_only_where_it_fits():
    sides = [96, 96, 96, 48, 48, 48, 48]
    sampler = MultiCropBatchSampler(sides, crops=[64, 32], batch_sizes=[2, 4], seed=0)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 2 + 2  # ceil(3 / 2) large, ceil(7 / 4) small
        for batch in batches:
            assert len({crop for _, _, crop, _ in batch}) == 1  # one size per batch
            assert all(e == epoch for e, _, _, _ in batch)
        large = sorted(i for b in batches for _, i, crop, _ in b if crop == 64)
        small = sorted(i for b in batches for _, i, crop, _ in b if crop == 32)
        assert large == [0, 1, 2] and small == list(range(7))
        # the sizes are interleaved, not one after the other
        assert [b[0][2] for b in batches] != sorted(b[0][2] for b in batches)
    # two ranks split each size's pass between them
    ranks = [MultiCropBatchSampler(sides, crops=[64, 32], batch_sizes=[2, 4], seed=0, rank=r, world_size=2)
             for r in range(2)]
    seen = [i for s in ranks for b in s for _, i, crop, _ in b if crop == 32]
    assert set(seen) == set(range(7)) and len(seen) == 8  # padded to a multiple of the world size


def test_a_recipe_with_two_crop_sizes_trains_reproducibly(two_sizes, tmp_path):
    cfg = recipe(two_sizes)
    seen = []
    result = train(cfg, out_dir=tmp_path / "a", device="cpu", plots=False,
                   progress=lambda done, total, **_: seen.append(total))
    assert seen[-1] == 2 * (2 + 2)  # per epoch: 2 batches of 64-px crops (3 large tiles), 2 of 32-px (7 tiles)
    assert np.isfinite(result.history[-1]["train_loss"]) and result.best_path.is_file()
    again = train(cfg, out_dir=tmp_path / "b", device="cpu", plots=False)
    a, b = read_checkpoint(result.last_path).state_dict, read_checkpoint(again.last_path).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a single crop (no crops) is a different run: the small tiles are padded to 64 there
    single = train(cfg.replace(data={"crops": (), "crop_batch_sizes": ()}), out_dir=tmp_path / "c", device="cpu",
                   plots=False)
    c = read_checkpoint(single.last_path).state_dict
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_bad_crop_lists_are_clear_errors(two_sizes, tmp_path):
    with pytest.raises(ConfigError, match=r"crops = \[64, 40\].*multiple of 32"):
        recipe(two_sizes).replace(data={"crops": (64, 40), "crop_batch_sizes": ()})
    with pytest.raises(ConfigError, match="crop_batch_sizes.*one batch size"):
        recipe(two_sizes).replace(data={"crop_batch_sizes": (2,)})
    with pytest.raises(DataError, match="no training tile is at least 128 px"):
        train(recipe(two_sizes).replace(data={"crops": (128, 32)}), out_dir=tmp_path / "x", device="cpu", plots=False)


def test_recipes_without_crops_keep_one_crop():
    cfg = TrainConfig.from_toml(REPO / "training" / "synthetic.toml")
    assert cfg.data.crops == () and cfg.data.crop == 128
    assert TrainConfig.from_dict(cfg.to_dict(), source=cfg.source) == cfg



@pytest.mark.parametrize("cache", [False, True])
def test_shorter_sides_come_from_the_headers_without_decoding_again(two_sizes, cache, monkeypatch):
    from napari_dfa.classes import ClassSet
    from napari_dfa.training import sampath as datasets

    ds = datasets.SamPathDataset(two_sizes, split="train", class_set=ClassSet.of("synthetic"), cache=cache)
    if cache:  # pairs already decoded give their own shapes
        decoded = [min(ds[i][0].shape[:2]) for i in range(len(ds))]
    monkeypatch.setattr(datasets, "read_rgb", lambda path: pytest.fail(f"decoded {path} again"))
    sides = ds.shorter_sides()
    assert sorted(sides) == [48] * 4 + [96] * 3  # the training split (fold >= 1)
    if cache:
        assert sides == decoded
