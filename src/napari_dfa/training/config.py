"""Training recipes: one frozen :class:`TrainConfig`, loaded from TOML, one source of defaults.

A recipe file (``training/*.toml``) has top-level training keys and three tables::

    name = "bcss"
    epochs = 35
    [data]      # where the tiles come from (SAM-Path layout or the synthetic generator)
    [model]     # passed through to napari_dfa.model.ModelConfig (preset, bias_mode, gamma, ...)
    [augment]   # flips, rot90, stain jitter

Unknown keys are refused with a :class:`~napari_dfa.errors.ConfigError` that names the file and the
key, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

SCHEDULES = ("cosine", "poly", "step", "constant")
LOSSES = ("focal_dice", "weighted_ce")
DATA_KINDS = ("sampath", "synthetic")


@dataclass(frozen=True)
class DataConfig:
    """Where the training tiles come from.

    Arguments:
      kind: ``"sampath"`` (img/, mask/, CSV ``img_id,fold``) or ``"synthetic"`` (generated once into
        the cache with :func:`napari_dfa.synth.write_dataset`).
      root: dataset folder for ``sampath`` (``--data`` overrides it); for ``synthetic`` an optional
        folder to generate into (default: ``$NAPARI_DFA_CACHE/synthetic/<hash>``).
      csv: CSV file name inside ``root``; empty = the only ``*.csv`` there.
      classes: a class set of :mod:`napari_dfa.classes` (``bcss``, ``crag``, ``bdsa``, ``synthetic``), or
        ``""``: the recipe names none and the dataset folder does (its ``classes.json`` or
        ``--classes``; see :func:`napari_dfa.training.datasets.folder_config`).
      class_names / class_colors: an explicit class list overriding ``classes`` (labels 1..K). A
        ``sampath`` recipe that names classes must agree with a folder's ``classes.json``; a
        ``synthetic`` recipe pointed at a folder (``--data``) takes the folder's classes.
      label_shift: added to every mask value on read, for copies whose label 0 is a real class
        (e.g. CRAG masks with 0 = background: ``label_shift = 1``); then nothing is ignored.
      crop: training crop size in pixels (a multiple of 32).
      crops: several training crop sizes (multiples of 32) instead of ``crop`` alone, e.g.
        ``[512, 128]`` to learn a slide's large regions and small tiles in one run. Every epoch
        passes once per size over the tiles at least that large; each batch holds one size and the
        sizes' batches are interleaved evenly. Empty (default) = ``crop`` only, as before.
      crop_batch_sizes: tiles per batch for each entry of ``crops`` (small crops are cheap: larger
        batches); empty = ``batch_size`` for every size.
      val_crop: 0 = validate on full images (padded to a multiple of 32); else a centre crop.
      mpp: microns per pixel of the tiles, written into the checkpoint.
      cache: keep decoded tiles in memory (fine for the synthetic set; off for large real sets).
      synth_n_train / synth_n_val / synth_n_test / synth_tile / synth_seed: size of the
        synthetic dataset.
      synth: extra keys for :class:`napari_dfa.synth.SynthConfig` (class frequencies, difficulty...).
    """

    kind: str = "synthetic"
    root: str = ""
    csv: str = ""
    classes: str = "synthetic"
    class_names: tuple[str, ...] = ()
    class_colors: tuple[tuple[int, int, int], ...] = ()
    label_shift: int = 0
    crop: int = 128
    crops: tuple[int, ...] = ()
    crop_batch_sizes: tuple[int, ...] = ()
    val_crop: int = 0
    mpp: float = 0.5
    cache: bool = True
    synth_n_train: int = 48
    synth_n_val: int = 12
    synth_n_test: int = 12
    synth_tile: int = 128
    synth_seed: int = 0
    synth: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation of the training crops (uint8 numpy, deterministic per seed, epoch and index).

    Arguments:
      flip: random horizontal / vertical flips.
      rot90: random multiples of 90 degrees.
      stain: strength of the HED stain jitter (per-channel scale ``1 ± stain``, shift ``± stain/4``
        in optical density); 0 = off.
      brightness: multiplicative brightness jitter (``1 ± brightness``); 0 = off.
    """

    flip: bool = True
    rot90: bool = True
    stain: float = 0.05
    brightness: float = 0.05


@dataclass(frozen=True)
class TrainConfig:
    """A complete training recipe.

    Arguments:
      name: recipe name (run folder default, logs).
      seed: seeds model init, data order and augmentation; two runs with one seed are identical.
      epochs: number of epochs.
      batch_size: tiles per step per process.
      accumulate: gradient accumulation steps (effective batch = batch_size x accumulate x world).
      lr / weight_decay: AdamW settings of the network; δ uses ``lr x [model]
        delta_lr_multiplier`` and no weight decay (the δ settings live in the model config).
      schedule: ``cosine``, ``poly`` (power 0.9), ``step`` (x0.1 at ``step_epochs``) or ``constant``.
      step_epochs: epochs at which ``step`` divides the LR by 10.
      warmup_steps: linear warm-up steps.
      loss: ``focal_dice`` (``focal_weight``·focal + ``dice_weight``·dice over softmax) or
        ``weighted_ce`` (inverse-frequency class-weighted cross-entropy, the re-weighting baseline).
      focal_gamma: focusing parameter of the focal loss.
      logit_adjust_tau: logit adjustment (Menon et al., ICLR 2021): the loss is computed on
        ``logits + τ·log f_c`` during training, the model's plain logits are used at inference;
        0 = off (the benchmark's ``logit_adjust`` method uses τ = 1 with bias mode ``none``).
      early_stop_patience: stop after this many epochs without a better validation mDice; 0 = off.
      amp: mixed precision on CUDA (ignored on CPU).
      num_workers: DataLoader worker processes (0 = load in the training process).
      model: keys for :class:`napari_dfa.model.ModelConfig` (preset, bias_mode, gamma, ...).
      init: start from this checkpoint (a ``.safetensors`` path or ``"demo"``) instead of a fresh
        model: its architecture and weights are used, ``[model]`` is ignored, f_c is re-measured on
        this training set (δ keeps its trained value). Empty = train from scratch.
      data / augment: see :class:`DataConfig` and :class:`AugmentConfig`.
      source: the TOML file this came from (for error messages), not a setting.
    """

    name: str = "run"
    seed: int = 0
    epochs: int = 20
    batch_size: int = 8
    accumulate: int = 1
    lr: float = 1e-3
    weight_decay: float = 1e-2
    schedule: str = "cosine"
    step_epochs: tuple[int, ...] = ()
    warmup_steps: int = 0
    loss: str = "focal_dice"
    focal_weight: float = 0.25
    dice_weight: float = 0.75
    focal_gamma: float = 2.0
    logit_adjust_tau: float = 0.0
    early_stop_patience: int = 0
    amp: bool = True
    num_workers: int = 0
    model: dict = field(default_factory=dict)
    init: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    source: str = ""

    def __post_init__(self):
        where = self.source or "TrainConfig"

        def bad(msg):
            raise ConfigError(f"{where}: {msg}")

        if self.schedule not in SCHEDULES:
            bad(f"schedule = {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.loss not in LOSSES:
            bad(f"loss = {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.data.kind not in DATA_KINDS:
            bad(f"[data] kind = {self.data.kind!r}; choose one of {', '.join(DATA_KINDS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.accumulate < 1:
            bad("epochs, batch_size and accumulate must be >= 1")
        if self.data.crop % 32 or self.data.crop <= 0:
            bad(f"[data] crop = {self.data.crop} must be a positive multiple of 32")
        if any(c % 32 or c <= 0 for c in self.data.crops):
            bad(f"[data] crops = {list(self.data.crops)}: every size must be a positive multiple of 32")
        if self.data.crop_batch_sizes and (len(self.data.crop_batch_sizes) != len(self.data.crops)
                                           or min(self.data.crop_batch_sizes) < 1):
            bad(f"[data] crop_batch_sizes = {list(self.data.crop_batch_sizes)}: one batch size >= 1 per entry of "
                f"crops = {list(self.data.crops)} (or leave it out to use batch_size)")
        if self.data.val_crop % 32 or self.data.val_crop < 0:
            bad(f"[data] val_crop = {self.data.val_crop} must be 0 or a multiple of 32")
        if self.lr <= 0:
            bad("lr must be > 0")
        if self.logit_adjust_tau < 0:
            bad(f"logit_adjust_tau = {self.logit_adjust_tau} must be >= 0")
        if self.num_workers < 0:
            bad(f"num_workers = {self.num_workers} must be >= 0")

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, source: str = "") -> "TrainConfig":
        """Build from a dict shaped like the TOML file; unknown keys raise ConfigError."""
        where = source or "config"
        raw = dict(raw)
        data = _sub(DataConfig, raw.pop("data", {}), f"{where} [data]")
        augment = _sub(AugmentConfig, raw.pop("augment", {}), f"{where} [augment]")
        model = raw.pop("model", {})
        if not isinstance(model, dict):
            raise ConfigError(f"{where}: [model] must be a table")
        known = {f.name for f in dataclasses.fields(cls)} - {"data", "augment", "model", "source"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "step_epochs" in raw:
            raw["step_epochs"] = tuple(int(e) for e in raw["step_epochs"])
        return cls(**raw, model=dict(model), data=data, augment=augment, source=source)

    @classmethod
    def from_toml(cls, path: str | Path) -> "TrainConfig":
        """Load a recipe file."""
        path = Path(path)
        raw = read_toml(path, what="recipe file", example="training/synthetic.toml")
        # A relative data root is relative to the recipe file, not to the working directory.
        data = raw.get("data", {})
        if data.get("root") and not Path(data["root"]).is_absolute():
            data["root"] = str((path.parent / data["root"]).resolve())
        return cls.from_dict(raw, source=str(path))

    def replace(self, **changes) -> "TrainConfig":
        """A copy with top-level fields changed; ``data=`` / ``augment=`` / ``model=`` take dicts
        of changes merged into the current tables."""
        if isinstance(changes.get("data"), dict):
            changes["data"] = dataclasses.replace(self.data, **_tuplify(changes["data"]))
        if isinstance(changes.get("augment"), dict):
            changes["augment"] = dataclasses.replace(self.augment, **changes["augment"])
        if isinstance(changes.get("model"), dict):
            changes["model"] = {**self.model, **changes["model"]}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-able dict (round-trips through :meth:`from_dict`)."""
        out = dataclasses.asdict(self)
        out.pop("source")
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _tuplify(d: dict) -> dict:
    d = dict(d)
    if "class_names" in d:
        d["class_names"] = tuple(d["class_names"])
    if "class_colors" in d:
        d["class_colors"] = tuple(tuple(int(v) for v in c) for c in d["class_colors"])
    for key in ("crops", "crop_batch_sizes"):
        if key in d:
            d[key] = tuple(int(v) for v in d[key])
    return d


def _sub(kind, raw, where):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return kind(**_tuplify(raw))


def read_toml(path: str | Path, *, what: str, example: str) -> dict:
    """A TOML file as a dict; a missing or malformed file is one ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found; pass e.g. --config {example}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
