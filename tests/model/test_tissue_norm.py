"""GroupNorm statistics over tissue only: how much glass a tile holds no longer changes its tissue's labels.

On whole slides the demo model scored mDice 0.847 against 0.95 inside tissue: the GroupNorms of
tiles that were partly glass normalised their tissue with glass in the statistics. These tests pin
the layer (statistics over tissue, plain GroupNorm without glass), the user-visible effect (tissue
labels beside glass as without it; the sample slide's Dice) and that every path that runs the
layers after the encoder (frozen fine-tuning, the traced export) leaves the same glass out.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_dfa import synth
from napari_dfa.inference import Runtime, segment
from napari_dfa.model import Segmenter
from napari_dfa.model.dfa_model import build_model
from napari_dfa.model.tissue_norm import GLASS_CELL, TissueGroupNorm, glass_cells, glass_context
from napari_dfa.slide import open_slide
from napari_dfa.training import frozen

GLASS_RGB = (236, 234, 238)  # the faint off-white of synthetic (and real) glass


@pytest.fixture(scope="module")
def glass_in_statistics(demo):
    """The demo model with the GroupNorms of before: statistics over the whole tile, glass included."""
    model = build_model(demo.config.replace(norm_excludes_glass=False), load_encoder_weights=False)
    model.load_state_dict(demo.model.state_dict())
    return Segmenter(model, class_names=demo.class_names, class_colors=demo.class_colors)


@pytest.fixture(scope="module")
def tissue(tmp_path_factory):
    """512² of tissue only: the middle of a synthetic slide's tissue."""
    path, _ = synth.write_slide(tmp_path_factory.mktemp("slide") / "norm.svs", size=(2048, 2048), seed=5)
    with open_slide(path) as slide:
        rgb = np.asarray(slide.levels[0])
    from napari_dfa.inference.tissue import tissue_from_rgb

    mask = tissue_from_rgb(rgb)
    # the 512² window with the most tissue, on a 256-px grid
    best = max(((y, x) for y in range(0, 1537, 256) for x in range(0, 1537, 256)),
               key=lambda p: mask[p[0]:p[0] + 512, p[1]:p[1] + 512].mean())
    crop = rgb[best[0]:best[0] + 512, best[1]:best[1] + 512]
    assert tissue_from_rgb(crop).mean() > 0.97
    return np.ascontiguousarray(crop)


def with_glass(rgb: np.ndarray, width: int) -> np.ndarray:
    """The tissue with ``width`` px of glass to its right (a tile at the tissue's edge)."""
    glass = np.empty((rgb.shape[0], width, 3), np.uint8)
    glass[:] = GLASS_RGB
    noise = np.random.default_rng(0).integers(-2, 3, glass.shape)
    return np.concatenate([rgb, np.clip(glass + noise, 0, 255).astype(np.uint8)], axis=1)


def test_the_layer_takes_its_statistics_over_tissue_only():
    torch.manual_seed(0)
    norm = TissueGroupNorm(4, 8)
    nn.init.normal_(norm.weight), nn.init.normal_(norm.bias)
    x = torch.randn(2, 8, 64, 64) * 3 + 1
    x[0, :, :, 32:] = 40.0  # sample 0: its right half is "glass" (a 4×4 cell map: cells of 16)
    cells = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    cells[0, :, :, 2:] = True
    with glass_context(cells):
        y = norm(x)
    plain = nn.GroupNorm(4, 8)
    plain.load_state_dict(norm.state_dict())
    # Sample 0's tissue is normalised as if the glass were not there ...
    assert torch.allclose(y[0, :, :, :32], plain(x[:1, :, :, :32])[0], atol=1e-5)
    assert not torch.allclose(y[0, :, :, :32], plain(x[:1])[0, :, :, :32], atol=1e-2)
    # ... and sample 1 (no glass) exactly as plain GroupNorm does.
    assert torch.allclose(y[1], plain(x[1:])[0], atol=1e-5)
    # Without a glass context it is plain GroupNorm, bit for bit.
    assert torch.equal(norm(x), plain(x))


def test_the_statistics_stay_float32_under_bfloat16_autocast():
    """CUDA (and --precision bf16) run the model under bfloat16 autocast, which would run the
    layer's matrix-product sums in bfloat16: its variance would be noise."""
    torch.manual_seed(1)
    norm = TissueGroupNorm(4, 8)
    x = torch.randn(2, 8, 64, 64) * 0.5 + 20.0  # a large mean: E[x²] − E[x]² needs the digits
    cells = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    cells[:, :, :, 3] = True
    with glass_context(cells):
        exact = norm(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = norm(x)
    assert torch.allclose(autocast.float(), exact, atol=1e-3)


def test_glass_cells_are_large_white_areas_not_lumens(tissue):
    x = torch.from_numpy(with_glass(tissue, 256)).permute(2, 0, 1)[None].float() / 255
    cells = glass_cells(x)
    assert cells is not None and cells.shape == (1, 1, 512 // GLASS_CELL, 768 // GLASS_CELL)
    assert cells[0, 0, :, 512 // GLASS_CELL + 1:].all()  # the glass
    assert not cells[0, 0, :, : 512 // GLASS_CELL - 1].any()  # the tissue, lumens and all
    assert glass_cells(torch.from_numpy(tissue).permute(2, 0, 1)[None].float() / 255) is None


def test_tissue_beside_glass_gets_the_labels_it_gets_without_glass(demo, glass_in_statistics, tissue):
    """What the pathologist sees at the edge of the tissue: the same classes as inside it. With
    glass in the statistics the demo model relabels most of the tissue once the tile is half glass."""
    inner = (slice(None), slice(0, 512 - 96))  # away from the glass edge (convolutions see it there)

    def agreement(seg):
        alone = seg.predict(tissue)[inner]
        return float((seg.predict(with_glass(tissue, 512))[:, :512][inner] == alone).mean())

    fixed, before = agreement(demo), agreement(glass_in_statistics)
    # Measured: 0.999 with statistics over tissue, 0.885 with the glass in them (the demo model
    # before this one, trained with glass in its statistics: 0.973 and 0.368).
    assert fixed >= 0.95
    assert fixed > before + 0.08


def test_a_tile_without_glass_is_computed_exactly_as_before(demo, glass_in_statistics, tissue):
    on = demo.predict_logits(tissue[None])["logits"]
    assert torch.equal(on, glass_in_statistics.predict_logits(tissue[None])["logits"])


def test_frozen_fine_tuning_decodes_with_the_same_glass_left_out(demo, tissue):
    """Fine-tuning with a frozen encoder decodes cached features: the decoder's GroupNorms must
    leave out the glass the forward pass leaves out, or fine-tuning trains another model."""
    rgb = with_glass(tissue, 256)
    feats = frozen.encode(demo.model, rgb)
    assert feats.glass is not None
    via_cache = frozen.decode_logits(demo.model, feats, rgb.shape[:2])
    direct = demo.predict_logits(rgb[None])["logits"]
    # float noise only (channels-last here, NCHW there: other summation orders); 2e-3 of logits ~±10
    assert torch.allclose(via_cache, direct, atol=2e-3)
    # A crop of the cached features carries its part of the glass.
    crop = frozen.crop_features(feats, 0, 256, 512, 512)
    assert crop.glass is not None and crop.glass[..., :, 8:].all() and not crop.glass[..., :, :7].any()


def test_the_sample_slide_scores_as_its_card_says(demo):
    """The sample slide's labels at defaults against its truth, within 0.03 of the test mDice on the
    model's card (issue 11). Measured 0.978 against the card's 0.975 (the demo model before this
    one: 0.951 against a card of 0.923 that its generator tiles no longer reproduced, and 0.847
    with glass in the statistics)."""
    from napari_dfa._sample_data import open_truth, sample_slide_path, sample_truth_path

    with open_slide(sample_slide_path()) as slide:
        rgb = np.asarray(slide.levels[0])
    truth = np.asarray(open_truth(sample_truth_path())[0])
    labels = segment(rgb, demo, runtime=Runtime(device="cpu")).labels
    pred = np.where(truth > 0, labels, 0)
    dice = [2 * ((pred == c) & (truth == c)).sum() / ((pred == c).sum() + (truth == c).sum())
            for c in range(1, len(demo.class_names) + 1)]
    card = demo.metadata["model_card"]["metrics"]["test_mdice"]
    assert abs(np.mean(dice) - card) <= 0.03, (np.mean(dice), card)
    assert np.mean(dice) >= 0.93


def test_the_model_and_the_tissue_mask_call_the_same_white_glass():
    from napari_dfa.inference import tissue
    from napari_dfa.model import tissue_norm

    assert (tissue_norm.MIN_CHROMA, tissue_norm.MAX_BRIGHTNESS) == (tissue.MIN_CHROMA, tissue.MAX_BRIGHTNESS)
