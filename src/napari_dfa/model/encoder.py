"""Image encoders: features at strides 4, 8, 16, 32.

Every encoder has ``out_channels`` (four ints) and ``forward(x) -> [f4, f8, f16, f32]`` on a
normalised ``B×3×H×W`` batch. The built-in :class:`ConvEncoder` trains from scratch on a CPU; it uses
GroupNorm, not BatchNorm, because fine-tuning on a pathologist's corrections runs with batches of a
few crops, where batch statistics are noise. ``build_encoder`` picks the encoder a config names.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .checkpoint import load_safetensors_into
from .config import ModelConfig
from .layers import ConvNormAct

logger = logging.getLogger(__name__)


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
            load_safetensors_into(encoder, weights)
    elif config.encoder == "sam-vit-b":
        from .sam_vit import SamVitEncoder

        encoder = SamVitEncoder.from_config(config, load_weights=load_weights)
    else:
        from .timm_adapter import TimmEncoder

        encoder = TimmEncoder(name=config.encoder.split(":", 1)[1], weights=weights)
    return encoder
