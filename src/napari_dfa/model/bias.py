"""The per-class attention bias b_c of the pixel → token attention, in every mode the benchmark compares.

| mode             | b_c                    | learned |
| ---------------- | ---------------------- | ------- |
| ``none``         | 0                      | no      |
| ``cffa``         | γ·log(1 − f_c)         | no      |
| ``difficulty``   | γ·log(1 − Dice_c)      | no      |
| ``dfa``          | δ_c                    | yes     |
| ``dfa-anchored`` | γ·log(1 − f_c) + δ_c   | yes     |
| ``dfa-out``      | δ_c, also on the output | yes     |

``dfa-out``: the same learned, warm-started δ_c acts in the attention and is also added to class
c's output score (the mask logits before softmax / argmax, in training and inference), so the
learned bias reaches the masks directly; in the other modes it acts only inside the attention,
where it turned out to move few pixels once trained.

f_c is the pixel frequency of class c over the non-ignored training pixels (stored as a buffer, so
it travels in the checkpoint). Warm start of the learned modes: δ_c ← α·(γ·log(1 − f_c) − mean_c),
which gives rare classes a head start and avoids their gradient starvation early in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

EPS = 1e-6


def log_prior(values: torch.Tensor, gamma: float) -> torch.Tensor:
    """γ·log(1 − x) with x clamped into (ε, 1 − ε) so neither end gives ±inf."""
    return gamma * torch.log1p(-values.clamp(EPS, 1 - EPS))


class ClassBias(nn.Module):
    """Arguments:
      num_classes (int): K.
      mode (str): bias mode (see the module docstring).
      gamma (float): γ of the prior.
      delta_init_scale (float): α of the warm start (0 = cold start, δ = 0).
      frequencies (sequence of K floats | None): f_c; None = uniform 1/K.
      difficulty_dice (sequence of K floats | None): earlier run's validation Dice (mode ``difficulty``).
    """

    def __init__(self, *, num_classes: int, mode: str = "dfa", gamma: float = 2.0,
                 delta_init_scale: float = 0.5, frequencies: Sequence[float] | None = None,
                 difficulty_dice: Sequence[float] | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.mode = mode
        self.gamma = float(gamma)
        self.delta_init_scale = float(delta_init_scale)
        self.register_buffer("frequencies", torch.full((num_classes,), 1.0 / num_classes))
        dice = difficulty_dice if difficulty_dice is not None else [0.0] * num_classes
        self.register_buffer("difficulty_dice", torch.as_tensor(self._vector(dice, "difficulty_dice"), dtype=torch.float32))
        # δ always exists (one state-dict layout for all modes); only learned modes train or use it.
        self.delta = nn.Parameter(torch.zeros(num_classes), requires_grad=self.learned)
        self.set_frequencies(frequencies if frequencies is not None else self.frequencies, warm_start=True)

    @property
    def learned(self) -> bool:
        return self.mode in ("dfa", "dfa-anchored", "dfa-out")

    @property
    def reaches_output(self) -> bool:
        """True when b_c is also added to class c's output logits (mode ``dfa-out``)."""
        return self.mode == "dfa-out"

    def _vector(self, values, name: str) -> np.ndarray:
        """Validated K-vector (checked in numpy, so building on the meta device works too)."""
        if isinstance(values, torch.Tensor):
            values = values.detach().cpu().numpy()
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.size != self.num_classes:
            raise ConfigError(f"{name} has {arr.size} values, the model has {self.num_classes} classes")
        if not np.isfinite(arr).all():
            raise ConfigError(f"{name} contains NaN or infinite values: {arr.tolist()}")
        return arr

    @torch.no_grad()
    def set_frequencies(self, frequencies, *, warm_start: bool = True) -> None:
        """Store f_c (K floats; normalised to sum to 1) and, with ``warm_start``, re-initialise δ."""
        if self.frequencies.is_meta:  # shape-only model (parameter counting): nothing to compute
            return
        f = self._vector(frequencies, "frequencies")
        if (f < 0).any() or f.sum() <= 0:
            raise ConfigError(f"class frequencies must be non-negative and not all zero: {f.tolist()}")
        self.frequencies.copy_(torch.as_tensor(f / f.sum(), dtype=torch.float32))
        if warm_start:
            self.delta.copy_(self.warm_start_delta())

    def prior(self) -> torch.Tensor:
        """γ·log(1 − f_c), not centred."""
        return log_prior(self.frequencies, self.gamma)

    def centred_prior(self) -> torch.Tensor:
        """γ·log(1 − f_c) − mean over classes (softmax over classes ignores a common shift)."""
        p = self.prior()
        return p - p.mean()

    def warm_start_delta(self) -> torch.Tensor:
        """δ's initial value: α·(γ·log(1 − f_c) − mean); zeros in the fixed modes."""
        if not self.learned:
            return torch.zeros_like(self.frequencies)
        return self.delta_init_scale * self.centred_prior()

    def forward(self) -> torch.Tensor:
        """Returns: b, the K-vector added to the pixel → token logits of every head and layer."""
        if self.mode == "none":
            return torch.zeros_like(self.frequencies)
        if self.mode == "cffa":
            return self.prior()
        if self.mode == "difficulty":
            return log_prior(self.difficulty_dice, self.gamma)
        if self.mode in ("dfa", "dfa-out"):
            return self.delta
        return self.prior() + self.delta  # dfa-anchored


def param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0,
                 delta_lr_multiplier: float = 20.0) -> list[dict]:
    """Optimizer groups: every trainable weight at ``lr`` with ``weight_decay``, and δ in its own
    group at ``lr × delta_lr_multiplier`` without weight decay (decay would pull the learned
    difficulty back to zero). Frozen parameters are left out; with ``delta_lr_multiplier = 0`` δ
    is left out too, so it stays exactly at its warm start (the ``dfa-warm-only`` ablation).
    """
    delta_ids = {id(m.delta) for m in model.modules() if isinstance(m, ClassBias)}
    others, deltas = [], []
    for p in model.parameters():
        if p.requires_grad:
            (deltas if id(p) in delta_ids else others).append(p)
    groups = [{"params": others, "lr": lr, "weight_decay": weight_decay, "name": "model"}]
    if deltas and delta_lr_multiplier != 0:
        groups.append({"params": deltas, "lr": lr * delta_lr_multiplier, "weight_decay": 0.0, "name": "delta"})
    return groups


def bias_l2_penalty(model: nn.Module, bias_l2_lambda: float) -> torch.Tensor:
    """λ·Σ δ_c² over the learned biases (the reference's ``bias_l2_lambda``; 0 gives a zero tensor)."""
    terms = [m.delta.pow(2).sum() for m in model.modules() if isinstance(m, ClassBias) and m.learned]
    if not terms or bias_l2_lambda == 0:
        device = next(model.parameters()).device
        return torch.zeros((), device=device)
    return bias_l2_lambda * torch.stack(terms).sum()
