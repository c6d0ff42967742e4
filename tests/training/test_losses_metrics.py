"""Losses and metrics: hand-computed examples, the ignore label, the two kinds of average."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dfa.training.augment import augment, rng_for, stain_jitter
from napari_dfa.training.config import AugmentConfig
from napari_dfa.training.losses import (
    SegmentationLoss,
    dice_loss,
    focal_loss,
    inverse_frequency_weights,
    weighted_cross_entropy,
)
from napari_dfa.training.metrics import SegmentationMeter, confusion_matrix, scores_by_name, scores_from_confusion


def test_metrics_match_hand_computed_example_with_ignore():
    # K = 2. Ground truth row-major 3x4; 0 = ignore.
    gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0]])
    pred = np.array([[1, 2, 2, 2], [1, 1, 1, 2], [2, 2, 1, 1]])  # the ignored row is all wrong
    # Labelled pixels: class 1: 4 pixels, predicted 1 on 3 of them; class 2: 4, predicted 2 on 3.
    # Predictions on labelled pixels: class 1 predicted 4 times (3 right), class 2 predicted 4 (3 right).
    # Dice_1 = 2*3/(4+4) = 0.75, IoU_1 = 3/(4+4-3) = 0.6; same for class 2.
    s = scores_from_confusion(confusion_matrix(pred, gt, 2))
    np.testing.assert_allclose(s["dice"], [0.75, 0.75])
    np.testing.assert_allclose(s["iou"], [0.6, 0.6])
    assert s["mdice"] == pytest.approx(0.75)
    # Changing predictions on the ignored row changes nothing.
    pred2 = pred.copy()
    pred2[2] = 1
    assert np.array_equal(confusion_matrix(pred2, gt, 2), confusion_matrix(pred, gt, 2))
    # The torch path gives the same counts.
    assert np.array_equal(confusion_matrix(torch.tensor(pred), torch.tensor(gt), 2), confusion_matrix(pred, gt, 2))


def test_absent_class_is_left_out_of_the_mean_and_prediction_zero_is_a_miss():
    gt = np.array([[1, 1, 1, 1]])
    pred = np.array([[1, 1, 0, 3]])  # 0 on a labelled pixel: a miss; 3 predicted but absent in GT
    s = scores_from_confusion(confusion_matrix(pred, gt, 3))
    # Dice_1 = 2*2/(4+2) = 2/3; classes 2 and 3 absent from the ground truth -> NaN, not in the mean.
    assert s["dice"][0] == pytest.approx(2 / 3)
    assert np.isnan(s["dice"][1]) and np.isnan(s["dice"][2])
    assert s["mdice"] == pytest.approx(2 / 3)


def test_dataset_level_and_per_image_averages_differ_as_documented():
    meter = SegmentationMeter(num_classes=2)
    # image A: 1 pixel of class 1, predicted wrong; image B: 99 pixels of class 1, all right.
    gt_a, pred_a = np.array([[1, 2, 2, 2]]), np.array([[2, 2, 2, 2]])
    gt_b, pred_b = np.ones((9, 11), int), np.ones((9, 11), int)
    meter.update(pred_a, gt_a)
    meter.update(pred_b, gt_b)
    s = meter.compute()
    # dataset level, class 1: tp 99, |G| 100, |P| 99 -> 198/199
    assert s["dice"][0] == pytest.approx(198 / 199)
    # per image, class 1: image A 0.0, image B 1.0 -> 0.5
    assert s["image_dice"][0] == pytest.approx(0.5)
    report = scores_by_name(s, ["a", "b"])
    assert set(report) == {"a", "b", "_mean", "_meta"}
    assert report["a"]["dice"] == pytest.approx(198 / 199)
    assert report["_meta"]["n_images"] == 2


def _logits_and_target(seed=0, k=3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, k, 8, 8, generator=g, requires_grad=True)
    target = torch.randint(0, k + 1, (2, 8, 8), generator=g)
    target[0, :4] = 0  # a block of ignored pixels
    return logits, target


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda lg, t: focal_loss(lg, t),
        lambda lg, t: dice_loss(lg, t),
        lambda lg, t: weighted_cross_entropy(lg, t, weights=torch.tensor([1.0, 2.0, 3.0])),
        lambda lg, t: SegmentationLoss()(lg, t),
    ],
    ids=["focal", "dice", "weighted_ce", "focal_dice"],
)
def test_losses_ignore_label_zero(loss_fn):
    logits, target = _logits_and_target()
    base = loss_fn(logits, target)
    base.backward()
    grad = logits.grad.clone()
    # Changing the prediction on ignored pixels changes neither the loss nor the gradient elsewhere.
    other = logits.detach().clone()
    other[0, :, :4] = torch.randn(3, 4, 8) * 10
    other.requires_grad_(True)
    changed = loss_fn(other, target)
    changed.backward()
    assert changed.item() == pytest.approx(base.item(), abs=1e-6)
    ignored = (target == 0).unsqueeze(1).expand_as(grad)
    assert torch.all(grad[ignored] == 0)
    assert torch.allclose(other.grad[~ignored], grad[~ignored], atol=1e-7)


def test_focal_dice_combination_and_hand_values():
    # Two labelled pixels, K = 2, logits chosen so p(true) = 0.5 exactly for both.
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[1, 2]]])
    # focal: -(1-0.5)^2 * log 0.5 = 0.25*log 2
    assert focal_loss(logits, target).item() == pytest.approx(0.25 * np.log(2))
    # dice per class: inter 0.5, sum p 1, sum g 1 -> 1 - (1+1)/(2+1) = 1/3
    assert dice_loss(logits, target).item() == pytest.approx(1 / 3)
    combined = SegmentationLoss(focal_weight=0.25, dice_weight=0.75)(logits, target)
    assert combined.item() == pytest.approx(0.25 * 0.25 * np.log(2) + 0.75 / 3)
    # A near-perfect prediction has a near-zero loss.
    good = torch.tensor([[[[20.0, -20.0]], [[-20.0, 20.0]]]])
    assert SegmentationLoss()(good, target).item() < 1e-3


def test_all_ignored_batch_gives_zero_loss_with_a_graph():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = SegmentationLoss()(logits, torch.zeros(1, 4, 4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


@pytest.mark.parametrize("kind", ["focal_dice", "weighted_ce"])
def test_logit_adjustment_is_the_plain_loss_on_prior_shifted_logits(kind):
    """Menon et al.'s logit adjustment: the loss sees logits + τ·log f_c, nothing else changes."""
    freqs = [0.7, 0.2, 0.1]
    logits, target = _logits_and_target(seed=3)
    shift = torch.log(torch.tensor(freqs)).view(1, 3, 1, 1)
    for tau in (1.0, 0.5):
        adjusted = SegmentationLoss(kind=kind, frequencies=freqs, logit_adjust_tau=tau)(logits, target)
        plain_on_shifted = SegmentationLoss(kind=kind, frequencies=freqs)(logits + tau * shift, target)
        torch.testing.assert_close(adjusted, plain_on_shifted)
        # and so do the gradients with respect to the model's logits
        g1 = torch.autograd.grad(adjusted, logits)[0]
        g2 = torch.autograd.grad(SegmentationLoss(kind=kind, frequencies=freqs)(logits + tau * shift, target), logits)[0]
        torch.testing.assert_close(g1, g2)
    plain = SegmentationLoss(kind=kind, frequencies=freqs)(logits, target)
    adjusted = SegmentationLoss(kind=kind, frequencies=freqs, logit_adjust_tau=1.0)(logits, target)
    assert abs(plain.item() - adjusted.item()) > 1e-3
    # a uniform prior is a common shift, which softmax ignores: no change at all
    uniform = SegmentationLoss(kind=kind, frequencies=[1, 1, 1], logit_adjust_tau=1.0)(logits, target)
    torch.testing.assert_close(uniform, SegmentationLoss(kind=kind, frequencies=[1, 1, 1])(logits, target))


def test_logit_adjustment_needs_frequencies_and_survives_an_absent_class():
    from napari_dfa.errors import ConfigError

    with pytest.raises(ConfigError, match="frequencies"):
        SegmentationLoss(logit_adjust_tau=1.0)
    logits, target = _logits_and_target()
    loss = SegmentationLoss(frequencies=[0.5, 0.5, 0.0], logit_adjust_tau=1.0)(logits, target)
    assert torch.isfinite(loss)


def test_inverse_frequency_weights_favour_rare_classes():
    w = inverse_frequency_weights([0.5, 0.4, 0.1])
    assert w.mean().item() == pytest.approx(1.0)
    assert w[2] > w[1] > w[0]
    assert (w[2] / w[0]).item() == pytest.approx(5.0)


def test_augmentation_is_deterministic_and_keeps_image_and_mask_aligned():
    rng0 = np.random.default_rng(0)
    rgb = rng0.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = (np.arange(40 * 50).reshape(40, 50) % 5).astype(np.uint8)
    # encode the mask in the red channel to check geometric alignment after the transform
    rgb[..., 0] = mask * 50
    cfg = AugmentConfig(stain=0.0, brightness=0.0)
    a1, m1 = augment(rgb, mask, rng_for(3, 1, 7), config=cfg, crop=32)
    a2, m2 = augment(rgb, mask, rng_for(3, 1, 7), config=cfg, crop=32)
    assert np.array_equal(a1, a2) and np.array_equal(m1, m2)
    assert a1.shape == (32, 32, 3) and m1.shape == (32, 32)
    assert np.array_equal(a1[..., 0], m1 * 50)
    # another epoch gives another sample
    a3, _ = augment(rgb, mask, rng_for(3, 2, 7), config=cfg, crop=32)
    assert not np.array_equal(a1, a3)


def test_stain_jitter_changes_colour_but_not_much():
    rgb = np.full((16, 16, 3), (180, 90, 160), dtype=np.uint8)  # an H&E-like pink-purple
    out = stain_jitter(rgb, np.random.default_rng(1), 0.1)
    diff = np.abs(out.astype(int) - rgb.astype(int))
    assert diff.max() > 0 and diff.mean() < 40
    # strength 0 is the identity (up to rounding)
    same = stain_jitter(rgb, np.random.default_rng(1), 0.0)
    assert np.abs(same.astype(int) - rgb.astype(int)).max() <= 1
