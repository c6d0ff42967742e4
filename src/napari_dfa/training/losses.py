"""Losses over the softmax class probabilities with the ignore label (0) masked out.

- :func:`focal_loss` and :func:`dice_loss`: the reference recipe is ``0.25·focal + 0.75·dice``.
- :func:`weighted_cross_entropy`: inverse-frequency class weights, the loss re-weighting baseline
  the DFA paper argues against.
- logit adjustment (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021):
  ``SegmentationLoss(logit_adjust_tau=τ)`` computes its loss on ``logits + τ·log f_c`` during
  training only; the model's own logits are used at inference. Adding the log-prior makes the
  loss ask for larger margins on rare classes, so the plain argmax later favours them by about
  ``τ·log(f_common / f_rare)``.

Targets are label maps with values 0..K (0 = ignore); logits are ``B×K×H×W`` (channel k = label k+1).
Ignored pixels contribute nothing, so changing the prediction there changes neither the loss nor
its gradient.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError


def _flatten(logits: torch.Tensor, target: torch.Tensor):
    """Labelled pixels only: (N×K logits, N class indices 0..K-1)."""
    if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match")
    k = logits.shape[1]
    flat = logits.float().permute(0, 2, 3, 1).reshape(-1, k)
    t = target.reshape(-1).long()
    keep = t > 0
    return flat[keep], t[keep] - 1


def focal_loss(logits: torch.Tensor, target: torch.Tensor, *, gamma: float = 2.0) -> torch.Tensor:
    """Softmax focal loss ``-(1 - p_t)^γ log p_t`` averaged over labelled pixels (0 if none)."""
    flat, t = _flatten(logits, target)
    if t.numel() == 0:
        return logits.sum() * 0.0  # keeps the graph (DDP needs every parameter to get a gradient)
    logp = F.log_softmax(flat, dim=1).gather(1, t[:, None]).squeeze(1)
    p = logp.exp()
    return (-((1 - p) ** gamma) * logp).mean()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss over the batch, mean over the K classes, labelled pixels only.

    ``1 - (2 Σ p_c g_c + s) / (Σ p_c + Σ g_c + s)`` per class; a class absent from the batch
    pushes its probability mass towards zero.
    """
    flat, t = _flatten(logits, target)
    if t.numel() == 0:
        return logits.sum() * 0.0
    k = flat.shape[1]
    p = F.softmax(flat, dim=1)
    g = F.one_hot(t, k).to(p.dtype)
    inter = (p * g).sum(0)
    denom = p.sum(0) + g.sum(0)
    return (1 - (2 * inter + smooth) / (denom + smooth)).mean()


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, *, weights: torch.Tensor) -> torch.Tensor:
    """Class-weighted cross-entropy over labelled pixels (weights: K floats)."""
    flat, t = _flatten(logits, target)
    if t.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(flat, t, weight=weights.to(flat.device, flat.dtype))


def log_prior_shift(frequencies, *, tau: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """``τ·log f_c`` (K floats; f_c normalised to sum to 1, clamped at ``eps`` so an absent class
    gets a large finite shift rather than −inf)."""
    f = np.asarray(frequencies, dtype=np.float64)
    f = np.clip(f / f.sum(), eps, None)
    return torch.tensor(tau * np.log(f), dtype=torch.float32)


def inverse_frequency_weights(frequencies, *, eps: float = 1e-4) -> torch.Tensor:
    """``w_c ∝ 1/f_c`` normalised to mean 1 (classes with f_c = 0 get the largest weight)."""
    f = np.clip(np.asarray(frequencies, dtype=np.float64), eps, None)
    w = 1.0 / f
    return torch.tensor(w / w.mean(), dtype=torch.float32)


class SegmentationLoss(torch.nn.Module):
    """The training loss of a recipe.

    Arguments:
      kind: ``"focal_dice"`` or ``"weighted_ce"``.
      focal_weight / dice_weight: coefficients of the focal and Dice terms (``focal_dice``).
      focal_gamma: focusing parameter γ of the focal term.
      frequencies: f_c of the training set (``weighted_ce`` derives its weights from them, logit
        adjustment its prior).
      logit_adjust_tau: τ of logit adjustment; the loss sees ``logits + τ·log f_c`` (0 = off).
    """

    def __init__(
        self,
        *,
        kind: str = "focal_dice",
        focal_weight: float = 0.25,
        dice_weight: float = 0.75,
        focal_gamma: float = 2.0,
        frequencies=None,
        logit_adjust_tau: float = 0.0,
    ):
        super().__init__()
        if kind not in ("focal_dice", "weighted_ce"):
            raise ConfigError(f"loss = {kind!r}; choose focal_dice or weighted_ce")
        if kind == "weighted_ce" and frequencies is None:
            raise ConfigError("loss = weighted_ce needs the training-set class frequencies")
        if logit_adjust_tau and frequencies is None:
            raise ConfigError("logit_adjust_tau > 0 needs the training-set class frequencies")
        self.kind = kind
        self.focal_weight = focal_weight
        self.dice_weight = dice_weight
        self.focal_gamma = focal_gamma
        weights = inverse_frequency_weights(frequencies) if frequencies is not None else torch.ones(1)
        self.register_buffer("class_weights", weights, persistent=False)
        self.logit_adjust_tau = float(logit_adjust_tau)
        shift = log_prior_shift(frequencies, tau=self.logit_adjust_tau) if self.logit_adjust_tau else torch.zeros(1)
        self.register_buffer("logit_shift", shift, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.logit_adjust_tau:
            logits = logits.float() + self.logit_shift.view(1, -1, *([1] * (logits.ndim - 2)))
        if self.kind == "weighted_ce":
            return weighted_cross_entropy(logits, target, weights=self.class_weights)
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.focal_weight:
            loss = loss + self.focal_weight * focal_loss(logits, target, gamma=self.focal_gamma)
        if self.dice_weight:
            loss = loss + self.dice_weight * dice_loss(logits, target)
        return loss
