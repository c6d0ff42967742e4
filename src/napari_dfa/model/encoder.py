"""Image encoders: features at strides 4, 8, 16, 32.

Every encoder has ``out_channels`` (four ints) and ``forward(x) -> [f4, f8, f16, f32]`` on a
normalised ``B×3×H×W`` batch. The built-in :class:`ConvEncoder` trains from scratch on a CPU; it uses
GroupNorm, not BatchNorm, because fine-tuning on a pathologist's corrections runs with batches of a
few crops, where batch statistics are noise. ``build_encoder`` picks the encoder a config names.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .config import ModelConfig

log = logging.getLogger(__name__)


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups that divide the channel count."""
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, *, kernel: int = 3, stride: int = 1, act: bool = True):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            group_norm(cout),
            nn.GELU() if act else nn.Identity(),
        )


class ResidualBlock(nn.Module):
    """Two 3×3 convolutions with a skip connection (ResNet basic block, GroupNorm)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels)
        self.conv2 = ConvNormAct(channels, channels, act=False)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.conv2(self.conv1(x)))


class ConvEncoder(nn.Module):
    """Small residual CNN with four stages at strides 4, 8, 16, 32.

    Arguments:
      widths (tuple[int, int, int, int]): channels of the four stages.
      depths (tuple[int, int, int, int]): residual blocks per stage.
    """

    def __init__(self, *, widths: tuple[int, ...], depths: tuple[int, ...]):
        super().__init__()
        # Stem: two stride-2 convolutions bring the image to stride 4 cheaply.
        self.stem = nn.Sequential(
            ConvNormAct(3, widths[0] // 2, stride=2),
            ConvNormAct(widths[0] // 2, widths[0], stride=2),
        )
        stages = []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            # Stage 0 stays at stride 4; the others halve the resolution first.
            down = nn.Identity() if i == 0 else ConvNormAct(widths[i - 1], width, stride=2)
            stages.append(nn.Sequential(down, *[ResidualBlock(width) for _ in range(depth)]))
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(widths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Returns: four feature maps at strides 4, 8, 16, 32."""
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


def build_encoder(config: ModelConfig, *, load_weights: bool = True) -> nn.Module:
    """The encoder a config names. With ``load_weights``, the local ``encoder_weights`` file is
    loaded; a checkpoint being restored passes False, since it carries every weight itself."""
    weights = config.encoder_weights if load_weights else None
    if config.encoder == "conv":
        encoder = ConvEncoder(widths=config.encoder_widths, depths=config.encoder_depths)
        if weights:
            _load_safetensors_into(encoder, weights)
    elif config.encoder == "sam-vit-b":
        from .sam_vit import SamVitEncoder

        encoder = SamVitEncoder.from_config(config, load_weights=load_weights)
    else:
        from .timm_adapter import TimmEncoder

        encoder = TimmEncoder(name=config.encoder.split(":", 1)[1], weights=weights)
    return encoder


def _load_safetensors_into(module: nn.Module, path: str | Path, *, prefix: str = "") -> None:
    """Load a safetensors state dict (keys optionally under ``prefix``) strictly into ``module``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: encoder weights file not found")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise CheckpointError(f"{path}: not a readable .safetensors weights file ({exc})") from None
    if prefix:
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        result = module.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(
            f"{path}: encoder weights do not fit the configured encoder ({str(exc).splitlines()[-1].strip()})"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: encoder weights do not match the configured encoder "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}); "
            "check the vit_* / encoder_* sizes in the model config"
        )
    log.info("loaded encoder weights from %s (%d tensors)", path, len(tensors))
