"""Building blocks the encoders and the pixel decoder share."""

from __future__ import annotations

from torch import nn

from .tissue_norm import TissueGroupNorm


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups that divide the channel count; its statistics leave out the
    glass the model marks around a forward pass (:mod:`.tissue_norm`)."""
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return TissueGroupNorm(groups, channels)


class ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, *, kernel: int = 3, stride: int = 1, act: bool = True):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            group_norm(cout),
            nn.GELU() if act else nn.Identity(),
        )
