"""Replay against forgetting (no Qt): the previous model's labels as pseudo-labels beside corrections."""

from __future__ import annotations

import numpy as np

from ..errors import DataError


def replay_from_prediction(labels: np.ndarray, corrected: np.ndarray, *, keep: float = 0.25,
                           block: int = 32, seed: int = 0) -> np.ndarray:
    """Pseudo-labels that keep a fine-tuned model predicting what it predicted where nobody corrected.

    Training only on the corrected pixels lets a model forget everything else: corrections of one
    class teach it to call everything that class, and a hold-out drawn from the same corrections
    cannot notice. The current prediction outside the corrections, thinned to a random ``keep``
    share of ``block``-pixel blocks (down-weighted against the corrections), is replayed with them.

    Arguments:
      labels: the current prediction over the reviewed region (uint8, 0 = none).
      corrected: the corrections over the same region (0 = not corrected).
      keep: share of blocks kept.
      block: block edge in pixels.
      seed: seeds the block choice.

    Returns: uint8 pseudo-labels, 0 where not replayed (and wherever a correction is).
    """
    labels, corrected = np.asarray(labels), np.asarray(corrected)
    if labels.shape != corrected.shape:
        raise DataError(f"prediction {labels.shape} and corrections {corrected.shape} differ in shape")
    h, w = labels.shape
    rng = np.random.default_rng(seed)
    pick = rng.random((-(-h // block), -(-w // block))) < keep
    mask = np.kron(pick, np.ones((block, block), bool))[:h, :w]
    return np.where(mask & (corrected == 0), labels, 0).astype(np.uint8)


