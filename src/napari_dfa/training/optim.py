"""The one optimizer every training loop builds (trainer, fine-tuning, throughput measurement).

AdamW over :func:`napari_dfa.model.bias.param_groups`: the network at ``lr`` with weight decay, the
learned class bias δ in its own group at ``lr × delta_lr_multiplier`` without decay. One builder, so
that a change of the δ recipe (its learning rate, its decay, freezing it) reaches every loop at once.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..model.bias import param_groups

logger = logging.getLogger(__name__)


def make_optimizer(model: nn.Module, *, lr: float, weight_decay: float, delta_lr_multiplier: float | None = None,
                   betas: tuple[float, float] = (0.9, 0.999), fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW with the DFA parameter groups.

    Arguments:
      model: the network; frozen parameters are left out.
      lr / weight_decay: settings of the network's group.
      delta_lr_multiplier: δ's learning rate is ``lr × delta_lr_multiplier`` (no weight decay);
        0 keeps δ at its warm start (the ``dfa-warm-only`` ablation). None: the model config's value.
      betas: AdamW's betas.
      fused: the fused CUDA kernel (one launch for all parameters instead of several per tensor);
        None = on when every trainable parameter is on a CUDA device.
    """
    if delta_lr_multiplier is None:
        config = getattr(model, "config", None)
        delta_lr_multiplier = float(getattr(config, "delta_lr_multiplier", 20.0))
    groups = param_groups(model, lr, weight_decay, delta_lr_multiplier)
    params = [p for g in groups for p in g["params"]]
    if fused is None:
        fused = bool(params) and all(p.is_cuda and p.is_floating_point() for p in params)
    logger.debug("AdamW: %s", ", ".join(f"{g['name']} ({len(g['params'])} tensors, lr {g['lr']:g})" for g in groups))
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=bool(fused) or None)
