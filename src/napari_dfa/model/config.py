"""ModelConfig: the one source of a model's shape and bias settings, and the named presets.

A config is a frozen dataclass that round-trips through JSON (it is stored in every checkpoint)
and through a TOML ``[model]`` table (``ModelConfig.from_dict``). Presets name sensible sizes, in
the way timm names its models: ``ModelConfig.from_preset("tiny", num_classes=5)``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

BIAS_MODES = ("none", "cffa", "difficulty", "dfa", "dfa-anchored", "dfa-out")
LEARNED_BIAS_MODES = ("dfa", "dfa-anchored", "dfa-out")
BUILTIN_ENCODERS = ("conv", "sam-vit-b")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and bias settings of a DFA segmentation model.

    Arguments:
      preset (str): name of the preset this config started from (informative only).
      num_classes (int): K, the number of classes (labels 1..K; the ignore label 0 is not a class).
      encoder (str): ``"conv"`` (built-in GroupNorm CNN, trains from scratch on a CPU),
        ``"sam-vit-b"`` (SAM's ViT image encoder, see ``vit_*``) or ``"timm:<name>"``
        (a timm backbone, optional extra).
      encoder_weights (str | None): local ``.safetensors`` file with encoder weights (SAM weights
        converted by ``import_sam_weights``, or a timm state dict). None: random initialisation.
      freeze_encoder (bool): keep the encoder's weights fixed during training.
      encoder_widths (tuple[int, ...]): channels of the conv encoder at strides 4, 8, 16, 32.
      encoder_depths (tuple[int, ...]): residual blocks per conv encoder stage.
      vit_dim, vit_depth, vit_heads, vit_window, vit_global_blocks, vit_patch, vit_img_size,
      vit_neck_dim, vit_mlp_ratio: SAM ViT image encoder shape (ViT-B: 768, 12, 12, 14,
        (2, 5, 8, 11), 16, 1024, 256, 4.0).
      pixel_dim (int): channels of the FPN pixel decoder and of the stride-4 mask features.
      decoder_dim (int): width d of class tokens and of the stride-16 memory.
      decoder_depth (int): number of two-way DFA decoder layers.
      decoder_heads (int): attention heads in the decoder (the bias b_c is added to every head).
      decoder_mlp_dim (int): hidden width of the token MLP.
      bias_mode (str): one of ``none``, ``cffa``, ``difficulty``, ``dfa`` (default), ``dfa-anchored``,
        ``dfa-out`` (δ also added to the output class logits; see :mod:`napari_dfa.model.bias`).
      gamma (float): γ of the frequency / difficulty prior γ·log(1 − x).
      delta_init_scale (float): α of the warm start δ ← α·(prior − mean prior); 0 = cold start.
      delta_lr_multiplier (float): learning-rate multiplier of δ's optimizer group (0 = δ stays at
        its warm start).
      bias_l2_lambda (float): weight of the optional L2 penalty on δ (0 = off).
      difficulty_dice (tuple[float, ...] | None): per-class validation Dice of an earlier run,
        required by ``bias_mode="difficulty"``.
      input_multiple (int): H and W of a forward pass must be multiples of it.
      context (int): suggested tile overlap / padding in pixels for tiled inference.
      norm_excludes_glass (bool): the GroupNorms take their statistics over tissue only, leaving
        out 32-px cells of glass (see :mod:`napari_dfa.model.tissue_norm`); off: over the whole tile.
      head_sigmas (tuple[float, ...] | None): scales of the pixel head's hand-made features (see
        :mod:`napari_dfa.model.pixel_head`); None: no head (the decoder's logits are the output).
      head_hidden, head_smooth, head_stride: the head's MLP width, the σ (px) its class
        probabilities are smoothed over, and the stride it runs at.
      head_context (tuple[float, ...]): scales (px) at which the head also reads the model's class
        probabilities around each pixel (empty: it does not; heads saved before it had none).
    """

    preset: str = "custom"
    num_classes: int = 5
    encoder: str = "conv"
    encoder_weights: str | None = None
    freeze_encoder: bool = False
    encoder_widths: tuple[int, ...] = (16, 32, 48, 64)
    encoder_depths: tuple[int, ...] = (1, 1, 1, 1)
    vit_dim: int = 768
    vit_depth: int = 12
    vit_heads: int = 12
    vit_window: int = 14
    vit_global_blocks: tuple[int, ...] = (2, 5, 8, 11)
    vit_patch: int = 16
    vit_img_size: int = 1024
    vit_neck_dim: int = 256
    vit_mlp_ratio: float = 4.0
    pixel_dim: int = 32
    decoder_dim: int = 32
    decoder_depth: int = 2
    decoder_heads: int = 2
    decoder_mlp_dim: int = 64
    bias_mode: str = "dfa"
    gamma: float = 2.0
    delta_init_scale: float = 0.5
    delta_lr_multiplier: float = 20.0
    bias_l2_lambda: float = 0.0
    difficulty_dice: tuple[float, ...] | None = None
    input_multiple: int = 32
    context: int = 32
    norm_excludes_glass: bool = True
    head_sigmas: tuple[float, ...] | None = None
    head_hidden: int = 64
    head_smooth: float = 16.0
    head_stride: int = 2
    head_context: tuple[float, ...] = ()

    def __post_init__(self):
        def bad(msg: str):
            raise ConfigError(f"model config: {msg}")

        if self.num_classes < 1:
            bad(f"num_classes must be >= 1, got {self.num_classes}")
        if self.bias_mode not in BIAS_MODES:
            bad(f"bias_mode {self.bias_mode!r} is not one of {', '.join(BIAS_MODES)}")
        if not (self.encoder in BUILTIN_ENCODERS or self.encoder.startswith("timm:")):
            bad(f"encoder {self.encoder!r} is not 'conv', 'sam-vit-b' or 'timm:<name>'")
        if self.encoder == "conv" and (len(self.encoder_widths) != 4 or len(self.encoder_depths) != 4):
            bad("encoder_widths and encoder_depths need 4 entries (strides 4, 8, 16, 32)")
        if self.decoder_dim % self.decoder_heads:
            bad(f"decoder_dim {self.decoder_dim} is not divisible by decoder_heads {self.decoder_heads}")
        if self.decoder_dim % 4:
            bad(f"decoder_dim must be divisible by 4 (2-D sine positions), got {self.decoder_dim}")
        if self.decoder_depth < 1:
            bad(f"decoder_depth must be >= 1, got {self.decoder_depth}")
        if self.encoder == "sam-vit-b" and self.vit_dim % self.vit_heads:
            bad(f"vit_dim {self.vit_dim} is not divisible by vit_heads {self.vit_heads}")
        if self.bias_mode == "difficulty":
            if self.difficulty_dice is None or len(self.difficulty_dice) != self.num_classes:
                bad(
                    "bias_mode 'difficulty' needs difficulty_dice: one validation Dice per class "
                    f"({self.num_classes} values) from an earlier run"
                )
        if self.difficulty_dice is not None and len(self.difficulty_dice) != self.num_classes:
            bad(f"difficulty_dice has {len(self.difficulty_dice)} values for {self.num_classes} classes")
        if self.head_sigmas is not None:
            if not self.head_sigmas or len(self.head_sigmas) > 8 or not all(0 < v <= 64 for v in self.head_sigmas):
                bad(f"head_sigmas must be 1 to 8 scales in (0, 64] px, got {list(self.head_sigmas)}")
            if self.head_stride not in (1, 2, 4):
                bad(f"head_stride must be 1, 2 or 4, got {self.head_stride}")
            if not 1 <= self.head_hidden <= 1024:
                bad(f"head_hidden must be 1..1024, got {self.head_hidden}")
            if not 0 <= self.head_smooth <= 256:
                bad(f"head_smooth must be 0..256 px, got {self.head_smooth}")
            if len(self.head_context) > 8 or not all(0 < v <= 64 for v in self.head_context):
                bad(f"head_context must be 0 to 8 scales in (0, 64] px, got {list(self.head_context)}")
        if self.input_multiple % 32:
            bad(f"input_multiple must be a multiple of 32 (the coarsest stride), got {self.input_multiple}")

    @property
    def learned_bias(self) -> bool:
        """True when δ is trained (modes ``dfa``, ``dfa-anchored`` and ``dfa-out``)."""
        return self.bias_mode in LEARNED_BIAS_MODES

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return _from_mapping({**self.to_dict(), **changes}, source="ModelConfig.replace")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "model config") -> ModelConfig:
        """Build from a dict (TOML table or checkpoint JSON). ``preset = "name"`` fills the defaults
        of that preset first; unknown keys are refused so a typo never passes silently.

        The DFA reference's ``use_prior_in_forward = true`` is accepted as ``bias_mode = "dfa-anchored"``.
        """
        data = dict(data)
        if data.pop("use_prior_in_forward", False):
            data["bias_mode"] = "dfa-anchored"
        preset = data.get("preset")
        if preset in PRESETS:
            data = {**PRESETS[preset], **data}
        return _from_mapping(data, source=source)

    @classmethod
    def from_json(cls, text: str, *, source: str = "model config") -> ModelConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: model config is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: model config must be a JSON object")
        return cls.from_dict(data, source=source)

    @classmethod
    def from_toml(cls, path, *, table: str = "model") -> ModelConfig:
        """Read the ``[model]`` table (or the whole file when ``table`` is empty) of a TOML file."""
        import tomllib
        from pathlib import Path

        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the model config ({exc})") from None
        if table:
            if not isinstance(data.get(table), dict):
                raise ConfigError(f"{path}: no [{table}] table")
            data = data[table]
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A preset (``tiny``, ``small``, ``base``, ``sam-vit-b``) with some fields overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
        return _from_mapping({**PRESETS[name], "preset": name, **overrides}, source=f"preset {name!r}")


_FIELDS = {f.name: f for f in dataclasses.fields(ModelConfig)}


def _from_mapping(data: dict[str, Any], *, source: str) -> ModelConfig:
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{source}: unknown model config keys {unknown}; known keys: {sorted(_FIELDS)}")
    kwargs = {name: _coerce(name, value, source) for name, value in data.items()}
    try:
        return ModelConfig(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check a value against its field's annotation (TOML and JSON give ints for floats, lists for
    tuples); a wrong type is a ConfigError naming the key, not a TypeError deep inside the model."""
    kind = _FIELDS[name].type  # a string: the module uses postponed annotations
    if value is None and "None" in kind:
        return None
    base = kind.replace(" | None", "")
    ok = True
    if base == "bool":
        ok = isinstance(value, bool)
    elif base == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif base == "str":
        ok = isinstance(value, str)
    elif base.startswith("tuple["):
        item = float if "float" in base else int
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float) if item is float else int) and not isinstance(v, bool) for v in value)
        value = tuple(item(v) for v in value) if ok else value
    if not ok:
        raise ConfigError(f"{source}: model config key {name!r} must be {kind}, got {value!r}")
    return value


# Named sizes. `tiny`: CPU unit tests (a few hundred K parameters). `small`: the bundled demo model
# (~0.5 M parameters, trains on a CPU). `base`: GPU training from scratch. `sam-vit-b`: the paper's
# recipe, SAM's frozen ViT-B image encoder with a simple feature pyramid (needs converted weights).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        encoder="conv",
        encoder_widths=(16, 32, 48, 64),
        encoder_depths=(1, 1, 1, 1),
        pixel_dim=32,
        decoder_dim=32,
        decoder_depth=2,
        decoder_heads=2,
        decoder_mlp_dim=64,
        context=32,
    ),
    "small": dict(
        encoder="conv",
        encoder_widths=(24, 48, 96, 128),
        encoder_depths=(1, 2, 2, 1),
        pixel_dim=48,
        decoder_dim=64,
        decoder_depth=2,
        decoder_heads=4,
        decoder_mlp_dim=128,
        context=48,
    ),
    "base": dict(
        encoder="conv",
        encoder_widths=(64, 128, 256, 384),
        encoder_depths=(2, 2, 6, 2),
        pixel_dim=128,
        decoder_dim=256,
        decoder_depth=3,
        decoder_heads=8,
        decoder_mlp_dim=1024,
        context=64,
    ),
    "sam-vit-b": dict(
        encoder="sam-vit-b",
        freeze_encoder=True,
        vit_dim=768,
        vit_depth=12,
        vit_heads=12,
        vit_window=14,
        vit_global_blocks=(2, 5, 8, 11),
        vit_patch=16,
        vit_img_size=1024,
        vit_neck_dim=256,
        pixel_dim=128,
        decoder_dim=256,
        decoder_depth=2,
        decoder_heads=8,
        decoder_mlp_dim=2048,
        context=64,
    ),
}
