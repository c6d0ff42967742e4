"""The method comparison (``napari-dfa bench``): does the learned class bias help, on this data?

Every method trains on the same data with the same seeds. A seed fixes the initial weights, the data
order and the augmentation, so run ``(method, seed)`` and ``(none, seed)`` differ only in the method:
the comparison is *paired*, per seed, and its statistics work on the per-seed differences.

Methods (:data:`METHODS`):

- ``none``          plain class-token decoder (b = 0): the reference of every paired difference
- ``cffa``          fixed frequency prior γ·log(1 − f_c)
- ``difficulty``    fixed γ·log(1 − Dice_c), Dice_c from the ``none`` run's validation of the same seed
- ``dfa``           learned δ_c in the attention, warm-started from the prior (the paper's method)
- ``dfa-out``       the same δ_c, also added to class c's output logits (it reaches the masks)
- ``dfa-warm-only`` ``dfa`` with δ frozen at its warm start (``delta_lr_multiplier = 0``)
- ``dfa-cold``      ``dfa`` with δ starting at 0 (``delta_init_scale = 0``)
- ``logit_adjust``  bias ``none``, loss on ``logits + τ·log f_c`` (τ = 1) in training only
  (Menon et al., ICLR 2021), plain logits at inference
- ``weighted_ce``   bias ``none``, inverse-frequency class-weighted cross-entropy

Reported per class on the test split: Dice (dataset level) as mean ± sd over seeds; the paired
difference to ``none`` with a two-sided sign test and a bootstrap 95 % interval of the mean
difference (seeds resampled); and a mechanism probe: how many pixels change label, and how the
class's Dice changes, when b_c is raised by 1 (the attention bias, which in ``dfa-out`` also shifts
the output) against raising that class's output logit by 1.

The parts: :mod:`.methods` (the methods, the shared recipe, the comparison file), :mod:`.runner`
(:func:`run_comparison`), :mod:`.probe` (:func:`bias_sensitivity`), :mod:`.stats` (the paired
statistics and the verdict) and :mod:`.report` (:func:`comparison_markdown`).
"""

from __future__ import annotations

from ..folder_classes import folder_config, read_class_list  # a folder's classes: one reader for all commands
from .methods import (BENCH_KEYS, DEFAULT_METHODS, DEFAULT_SEEDS, METHODS, REFERENCE, Method, class_difficulty,
                      comparison_config, describe_data, load_comparison_toml, method_config)
from .probe import bias_sensitivity
from .report import comparison_markdown
from .runner import run_comparison
from .stats import BOOTSTRAP_SAMPLES, SIGNIFICANCE, bootstrap_ci, paired_statistics, sign_test, verdict

__all__ = [
    "BENCH_KEYS", "BOOTSTRAP_SAMPLES", "DEFAULT_METHODS", "DEFAULT_SEEDS", "METHODS", "REFERENCE", "SIGNIFICANCE",
    "Method", "bias_sensitivity", "bootstrap_ci", "class_difficulty", "comparison_config", "comparison_markdown",
    "describe_data", "folder_config", "load_comparison_toml", "method_config", "paired_statistics",
    "read_class_list", "run_comparison", "sign_test", "verdict",
]
