"""Training, evaluation and fine-tuning of DFA models (no Qt).

- :func:`train` — a recipe (:class:`TrainConfig`, from ``training/*.toml``) end to end: checkpoints
  best/last, resume, early stop, CSV/JSON logs and PNG plots, DDP under torchrun.
- :func:`evaluate` — dataset-level and per-image Dice/IoU per class, keyed by class name.
- :func:`finetune` — a pathologist's corrections into a new, provenance-carrying Segmenter.
- :mod:`.comparison` — the paired method comparison (``napari-dfa bench``): does the learned bias help?
"""

from __future__ import annotations

# Eager imports: `finetune` is both a submodule and a function; importing the function here
# binds the name to the function for good.
from .config import AugmentConfig, DataConfig, TrainConfig
from .datasets import SamPathDataset, class_frequencies, open_split
from .evaluation import evaluate
from .finetune import FinetuneResult, finetune
from .losses import SegmentationLoss
from .metrics import SegmentationMeter
from .trainer import TrainResult, train

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "TrainConfig",
    "SamPathDataset",
    "class_frequencies",
    "open_split",
    "SegmentationLoss",
    "SegmentationMeter",
    "evaluate",
    "finetune",
    "FinetuneResult",
    "train",
    "TrainResult",
]
