"""GroupNorm whose statistics leave glass out.

GroupNorm normalises each tile by the mean and variance of all its positions. On a whole slide a
tile at the edge of the tissue is partly glass, and glass — bright, flat, unlike anything a model
trained inside tissue has seen — moves those statistics, so every tissue pixel of that tile is
normalised differently from the training crops: on the sample slide, tiles a third glass or more
were wrong on ~35 % of their tissue against ~5 % in tiles without glass. Taking the statistics
over tissue only (the glass positions are still normalised, with the tissue's statistics) removes
that dependence on how much glass a tile holds; it also makes two tilings of the same slide agree
more, since a tile's glass share is what changes most between them.

Glass here is a :data:`GLASS_CELL`-pixel cell of the input that is at least :data:`GLASS_SHARE`
white (the tissue mask's criterion: low chroma and bright), so lumens, fat and tears inside tissue
— small white holes a model sees in its training crops — stay in the statistics. A batch without
glass runs plain GroupNorm, bit for bit.

:class:`TissueGroupNorm` is a drop-in :class:`torch.nn.GroupNorm` (same parameters, same
checkpoints); the model sets the glass of its input with :func:`glass_context` around a forward
pass, and every TissueGroupNorm inside reads it at its own resolution.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

# The tissue mask's criterion (napari_dfa.inference.tissue): a pixel is tissue when its chroma
# max(RGB) - min(RGB) reaches MIN_CHROMA or it is darker than MAX_BRIGHTNESS (0-255 scale).
MIN_CHROMA = 18
MAX_BRIGHTNESS = 200
GLASS_CELL = 32  # the coarsest feature stride: one cell is one position of the deepest GroupNorm
GLASS_SHARE = 0.9  # white share of a cell that makes it glass (lumens rarely fill 32x32 px)
MIN_TISSUE_CELLS = 4  # fewer tissue cells than this in a sample: plain statistics (too few to trust)

_GLASS: ContextVar[GlassMap | None] = ContextVar("napari_dfa_glass", default=None)


class GlassMap:
    """The glass cells of a batch, handed to every TissueGroupNorm at its own resolution.

    Arguments:
      cells: B×1×h×w bool, True where a :data:`GLASS_CELL` cell of the input is glass.
    """

    def __init__(self, cells: torch.Tensor):
        # Samples with (almost) no tissue keep plain statistics: no glass cells for them.
        tissue = (~cells).flatten(1).sum(1)
        self.cells = cells & (tissue >= MIN_TISSUE_CELLS)[:, None, None, None]
        self._keep: dict[float, torch.Tensor] = {}

    def keep(self, x: torch.Tensor) -> torch.Tensor:
        """B×1×H×W float weights (1 = tissue, 0 = glass) for a feature map ``x`` (B×C×H×W)."""
        # A scale factor, not a size: a traced export keeps H and W free (the ratio is constant).
        factor = float(x.shape[-2]) / float(self.cells.shape[-2])
        if factor not in self._keep:
            # Nearest: each feature position takes its cell's verdict (the strides divide 32).
            cells = F.interpolate(self.cells.float(), scale_factor=factor, mode="nearest")
            self._keep[factor] = 1.0 - cells
        return self._keep[factor]


def glass_cells(x: torch.Tensor) -> torch.Tensor | None:
    """B×1×(H/32)×(W/32) bool glass cells of a B×3×H×W batch in [0, 1] (H, W multiples of 32), or
    None when the batch holds none (the common case: plain GroupNorm, no extra cost). A traced
    export always gets the cells, so that it takes the same path on every input."""
    # Every second pixel is plenty for a cell's white share, at a quarter of the cost.
    sub = x[..., ::2, ::2].detach()
    hi = sub.amax(dim=1, keepdim=True)
    lo = sub.amin(dim=1, keepdim=True)
    white = ((hi - lo) < MIN_CHROMA / 255.0) & (hi >= MAX_BRIGHTNESS / 255.0)
    tracing = torch.jit.is_tracing()
    if not tracing and not bool(white.any()):
        return None
    cells = F.avg_pool2d(white.float(), GLASS_CELL // 2) >= GLASS_SHARE
    return cells if tracing or bool(cells.any()) else None


@contextlib.contextmanager
def glass_context(cells: torch.Tensor | None):
    """Every :class:`TissueGroupNorm` run inside leaves these glass cells out of its statistics
    (None: plain GroupNorm). Context-local, so threads running models at once do not mix."""
    token = _GLASS.set(None if cells is None else GlassMap(cells))
    try:
        yield
    finally:
        _GLASS.reset(token)


class TissueGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics over the tissue positions of each sample (see the module)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        glass = _GLASS.get()
        if glass is None:
            return super().forward(x)
        b, c = x.shape[:2]
        g = self.num_groups
        keep = glass.keep(x)  # B×1×H×W
        xf = x.float()
        n = keep.sum(dim=(2, 3)) * (c // g)  # B×1: tissue positions × channels per group

        def per_channel(group_values):  # B×G -> B×C×1×1
            return group_values[:, :, None].expand(b, g, c // g).reshape(b, c, 1, 1)

        # Two passes, as GroupNorm computes them (E[x²] − E[x]² loses digits in float32).
        mean = (xf * keep).sum(dim=(2, 3)).view(b, g, -1).sum(2) / n
        centred = xf - per_channel(mean)
        var = (centred * centred * keep).sum(dim=(2, 3)).view(b, g, -1).sum(2) / n
        scale = per_channel(torch.rsqrt(var + self.eps))
        if self.affine:
            return torch.addcmul(self.bias.view(1, c, 1, 1), centred, scale * self.weight.view(1, c, 1, 1)).to(x.dtype)
        return (centred * scale).to(x.dtype)
