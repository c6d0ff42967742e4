"""FPN pixel decoder: encoder features → stride-4 mask features F and stride-16 decoder memory.

Top-down fusion (Feature Pyramid Network): every level is projected to ``dim`` channels, the coarser
level is upsampled and added, and a 3×3 convolution smooths the sum. The stride-16 level (with the
stride-32 context folded in) becomes the memory the class tokens attend to; the stride-4 level
is fused (added) with the upsampled, decoder-updated memory (:class:`MemoryUpsampler`, SAM style)
into the mask features every class embedding is dotted with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvNormAct, group_norm


class FPNPixelDecoder(nn.Module):
    """Arguments:
      in_channels (tuple[int, int, int, int]): encoder channels at strides 4, 8, 16, 32.
      dim (int): FPN width, also the channels of the stride-4 mask features.
      memory_dim (int): channels of the stride-16 memory (the decoder width d).
    """

    def __init__(self, *, in_channels: tuple[int, ...], dim: int, memory_dim: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, kernel_size=1) for c in in_channels)
        self.smooth = nn.ModuleList(ConvNormAct(dim, dim) for _ in in_channels)
        self.memory_proj = nn.Conv2d(dim, memory_dim, kernel_size=1)
        self.mask_proj = nn.Conv2d(dim, dim, kernel_size=1)
        self.mask_dim = dim

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns: (mask features B×dim×H/4×W/4, memory B×memory_dim×H/16×W/16)."""
        x = None
        fused = [None] * len(features)
        # Top-down: from stride 32 to stride 4.
        for i in reversed(range(len(features))):
            lat = self.lateral[i](features[i])
            if x is not None:
                lat = lat + F.interpolate(x, size=lat.shape[-2:], mode="nearest")
            x = self.smooth[i](lat)
            fused[i] = x
        return self.mask_proj(fused[0]), self.memory_proj(fused[2])


class MemoryUpsampler(nn.Module):
    """The decoder-updated stride-16 memory → a stride-4 term added to the FPN mask features.

    SAM's mask decoder upsamples the transformer-updated image embedding into the features the
    class embeddings are dotted with; without this path the pixel → class attention (where the DFA
    bias b_c acts) would reach the masks only indirectly, through the class tokens. 1×1 convolution
    d → ``dim``, GroupNorm, GELU, bilinear upsampling to the mask-feature grid (×4): cheap.

    Arguments:
      memory_dim (int): channels of the memory (decoder width d).
      dim (int): channels of the mask features.
    """

    def __init__(self, *, memory_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(memory_dim, dim, kernel_size=1, bias=False)
        self.norm = group_norm(dim)
        self.act = nn.GELU()

    def forward(self, memory: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Arguments: memory B×d×h×w; size (H4, W4). Returns B×dim×H4×W4."""
        x = self.act(self.norm(self.proj(memory)))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def sine_position_encoding(height: int, width: int, dim: int, *, device=None, dtype=None,
                           temperature: float = 10000.0) -> torch.Tensor:
    """2-D sine/cosine positional encoding (DETR style) of a height×width grid.

    Half the channels encode y, half x, each as sin/cos at geometric frequencies. Positions are
    grid-cell indices, not normalised to the tile: a model trained on 256-pixel crops then sees the
    same codes, at the same spacing, on the 512-pixel tiles of whole-slide inference.
    Returns: dim×height×width.
    """
    if dim % 4:
        raise ValueError(f"sine position encoding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    y = torch.arange(height, device=device, dtype=torch.float32)
    x = torch.arange(width, device=device, dtype=torch.float32)
    freq = temperature ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    py = y[:, None] / freq  # H×q
    px = x[:, None] / freq  # W×q
    py = torch.cat([py.sin(), py.cos()], dim=1)  # H×2q
    px = torch.cat([px.sin(), px.cos()], dim=1)  # W×2q
    pos = torch.cat([py[:, None, :].expand(height, width, -1), px[None, :, :].expand(height, width, -1)], dim=2)
    return pos.permute(2, 0, 1).to(dtype or torch.float32)
