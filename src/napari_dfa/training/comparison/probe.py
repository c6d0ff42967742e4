"""The mechanism probe (no Qt): how much raising one class's bias moves the prediction, against
raising its output logit."""

from __future__ import annotations

import math

import numpy as np
import torch


def _dice(pred: torch.Tensor, mask: torch.Tensor, c: int) -> tuple[int, int]:
    """(2·|P∩G|, |P| + |G|) of class index c over the labelled pixels (mask > 0)."""
    labelled = mask > 0
    p = (pred == c) & labelled
    g = mask == c + 1
    return 2 * int((p & g).sum()), int(p.sum()) + int(g.sum())


@torch.no_grad()
def bias_sensitivity(segmenter, images, masks=None, *, shift: float = 1.0) -> dict:
    """How much each class's bias moves the prediction, against its output logit.

    For every class c: ``bias_px`` is the share of pixels whose label changes when b_c (the vector
    the decoder adds to the pixel → class attention logits, in every mode; in ``dfa-out`` it is
    also c's output offset) is raised by ``shift``; ``logit_px`` the same for raising class c's
    output logit by ``shift``. With ``masks`` (0 = ignore), ``bias_dice`` / ``logit_dice`` are the
    change of class c's Dice over the labelled pixels of all images (None where c is neither
    predicted nor present). The model is left as it was.
    """
    model = segmenter.model
    k = segmenter.num_classes
    logits = [segmenter.predict_logits(np.asarray(img)[None])["logits"][0] for img in images]
    base = [lg.argmax(0) for lg in logits]
    device = logits[0].device if logits else torch.device("cpu")
    targets = None if masks is None else [torch.as_tensor(np.asarray(m).astype(np.int64), device=device) for m in masks]
    n_px = sum(b.numel() for b in base)

    def changed(preds) -> float:
        return float(sum(int((p != b).sum()) for p, b in zip(preds, base)) / max(n_px, 1))

    def dice(preds, c) -> float:
        num = den = 0
        for p, t in zip(preds, targets):
            a, b = _dice(p, t, c)
            num, den = num + a, den + b
        return num / den if den else float("nan")

    def delta_dice(preds, c):
        if targets is None:
            return None
        d = dice(preds, c) - dice(base, c)
        return None if math.isnan(d) else d

    out = {"shift": shift, "pixels": n_px, "bias_px": [], "bias_dice": [], "logit_px": [], "logit_dice": []}
    for c in range(k):
        onehot = torch.zeros(k, device=device)
        onehot[c] = shift
        preds = [(lg + onehot[:, None, None]).argmax(0) for lg in logits]
        out["logit_px"].append(changed(preds))
        out["logit_dice"].append(delta_dice(preds, c))
        handle = model.bias.register_forward_hook(lambda _m, _i, b, v=onehot: b + v.to(b.device, b.dtype))
        try:
            preds = [segmenter.predict_logits(np.asarray(img)[None])["logits"][0].argmax(0) for img in images]
        finally:
            handle.remove()
        out["bias_px"].append(changed(preds))
        out["bias_dice"].append(delta_dice(preds, c))
    return out
