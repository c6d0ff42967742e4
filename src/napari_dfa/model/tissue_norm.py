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

# A pixel is tissue when its chroma max(RGB) - min(RGB) reaches MIN_CHROMA or it is darker than
# MAX_BRIGHTNESS (0-255 scale); the tissue mask of whole-slide inference uses the same two.
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
        # float32 statistics whatever the autocast: bmm would run in bfloat16 under it, and
        # E[x²] − E[x]² in bfloat16 is noise.
        with torch.autocast(x.device.type, enabled=False):
            return self._tissue_norm(x, glass)

    def _tissue_norm(self, x: torch.Tensor, glass: GlassMap) -> torch.Tensor:
        b, c, h, w = x.shape
        g = self.num_groups
        xf = x.float()
        # Positions × channels, a view in either memory format (channels-last: no copy at all).
        if xf.is_contiguous(memory_format=torch.channels_last):
            flat = xf.permute(0, 2, 3, 1).reshape(b, h * w, c)
        else:
            flat = xf.reshape(b, c, h * w).transpose(1, 2)
        keep = glass.keep(x).reshape(b, 1, h * w)  # 1 = tissue
        # Sums over the tissue as matrix products, the output as one multiply-add: ~2x plain
        # GroupNorm's time where a masked copy per step cost ~5x. E[x²] − E[x]² in float32 is exact
        # enough for GroupNorm inputs (conv outputs of moderate mean; checked against GroupNorm).
        n = keep.sum(dim=2) * (c // g)  # B×1: tissue positions × channels per group
        s1 = torch.bmm(keep, flat)[:, 0].reshape(b, g, -1).sum(2)
        s2 = torch.bmm(keep, flat * flat)[:, 0].reshape(b, g, -1).sum(2)
        mean = s1 / n
        rstd = torch.rsqrt((s2 / n - mean * mean).clamp_min(0.0) + self.eps)
        scale = rstd[:, :, None].expand(b, g, c // g).reshape(b, c)
        shift = -(mean * rstd)[:, :, None].expand(b, g, c // g).reshape(b, c)
        if self.affine:
            shift = shift * self.weight + self.bias
            scale = scale * self.weight
        return torch.addcmul(shift[:, :, None, None], xf, scale[:, :, None, None]).to(x.dtype)
