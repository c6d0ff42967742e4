"""A recipe's data (no Qt): the split it trains or is tested on, and the synthetic stand-in.

The synthetic data (:mod:`napari_dfa.synth`) is written once in the SAM-Path layout into a cache
folder keyed by its settings, so every bias mode of a benchmark sees the very same tiles.

The parts live in their own modules and are importable from here as before:
:mod:`.sampath` (the SAM-Path reader and writer), :mod:`.folder_classes` (a recipe's and a folder's
class lists) and :mod:`.samplers` (the torch views the trainer uses).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import DataError
from .config import DataConfig
from .folder_classes import (CLASSES_JSON, SYNTH_JSON, class_set_for, folder_config, label_range, parse_class_names,
                             read_class_list, recipe_class_set, resolve_folder_classes)
from .samplers import EpochSampler, EvalTiles, MultiCropBatchSampler, TrainTiles, pad_collate
from .sampath import (IMAGE_EXTS, SPLITS, SamPathDataset, class_frequencies, find_csv, image_kind, image_size,
                      read_mask, read_rgb, read_split_csv, write_sampath)

logger = logging.getLogger(__name__)

__all__ = [
    "CLASSES_JSON", "IMAGE_EXTS", "SPLITS", "SYNTH_JSON", "EpochSampler", "EvalTiles", "MultiCropBatchSampler",
    "SamPathDataset", "TrainTiles", "class_frequencies", "class_set_for", "find_csv", "folder_config", "image_kind",
    "image_size", "label_range", "open_split", "pad_collate", "parse_class_names", "read_class_list", "read_mask",
    "read_rgb", "read_split_csv", "recipe_class_set", "resolve_folder_classes", "synthetic_root", "write_sampath",
]


def synthetic_root(data: DataConfig) -> Path:
    """Generate the synthetic dataset of ``data`` once (atomically) and return its folder."""
    from .. import synth
    from ..files.paths import cache_dir

    settings = {
        "n": [data.synth_n_train, data.synth_n_val, data.synth_n_test],
        "tile": data.synth_tile,
        "seed": data.synth_seed,
        "synth": data.synth,
    }
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(data.root) if data.root else cache_dir() / "synthetic" / key
    if (root / ".complete").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        cfg = synth.SynthConfig.from_dict(dict(data.synth)) if data.synth else synth.SynthConfig()
        logger.info("generating the synthetic dataset into %s", root)
        synth.write_dataset(
            tmp, cfg, n_train=data.synth_n_train, n_val=data.synth_n_val, n_test=data.synth_n_test,
            tile=data.synth_tile, seed=data.synth_seed,
        )
        (tmp / "settings.json").write_text(json.dumps(settings, sort_keys=True))
        (tmp / ".complete").touch()
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # an empty folder the user made for it
        try:
            os.replace(tmp, root)
        except OSError:
            pass  # another process (a DDP rank) finished first: use its copy
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not (root / ".complete").is_file():
        raise DataError(f"{root}: synthetic dataset generation did not complete; delete the folder and retry")
    return root


def open_split(data: DataConfig, split: str, *, root: str | Path | None = None) -> SamPathDataset:
    """The ``split`` of the recipe's data (``root`` overrides ``[data] root``, like ``--data``)."""
    class_set = class_set_for(data)
    if root is None:
        if data.kind == "synthetic":
            root = synthetic_root(data)
        elif not data.root:
            raise DataError("no dataset folder: pass --data <folder in the SAM-Path layout> or set [data] root")
        else:
            root = data.root
    return SamPathDataset(root, split=split, class_set=class_set, csv=data.csv, label_shift=data.label_shift, cache=data.cache)
