"""SAM's ViT image encoder (the frozen encoder of SAM-Path and of the DFA paper), written here.

The ``segment-anything`` package imports torchvision, which does not import beside the CPU torch
build used here, so the encoder is re-implemented with exactly SAM's parameter names
(``patch_embed.proj``, ``pos_embed``, ``blocks.i.attn.qkv`` / ``rel_pos_h`` / ``rel_pos_w``, ``neck.0..3``)
so that the official ``sam_vit_b_01ec64.pth`` loads unchanged after a one-off conversion to
safetensors by :func:`import_sam_weights`. Dimensions are constructor arguments so a test can build a
small encoder with the same key layout.

:class:`SamVitEncoder` adds a ViTDet-style simple feature pyramid on the stride-16 neck output to
give the strides 4, 8, 16, 32 the pixel decoder expects.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .config import ModelConfig
from .checkpoint import load_safetensors_into
from .layers import group_norm

logger = logging.getLogger(__name__)

SAM_PREFIX = "image_encoder."


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a B×C×H×W map (SAM's neck norm)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    def __init__(self, *, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # B×H×W×C


class MLPBlock(nn.Module):
    def __init__(self, *, dim: int, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


def rel_pos_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative position embeddings for every (query, key) offset along one axis, resized linearly
    when the grid differs from the one the weights were trained at. Returns q_size×k_size×C."""
    max_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_dist:
        rel_pos = F.interpolate(rel_pos.T[None], size=max_dist, mode="linear")[0].T
    q = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    return rel_pos[((q - k) + (k_size - 1) * max(q_size / k_size, 1.0)).long()]


class Attention(nn.Module):
    """Multi-head self-attention with SAM's decomposed relative positions."""

    def __init__(self, *, dim: int, heads: int, grid: tuple[int, int]):
        super().__init__()
        self.heads = heads
        head_dim = dim // heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid[0] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # B×heads×N×c
        # Decomposed relative position bias: q·R_h(Δy) + q·R_w(Δx), added to the logits.
        rh = rel_pos_table(h, h, self.rel_pos_h)
        rw = rel_pos_table(w, w, self.rel_pos_w)
        rq = q.reshape(b, self.heads, h, w, -1)
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", rq, rh)
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", rq, rw)
        bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(b, self.heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    b, h, w, c = x.shape
    ph, pw = (window - h % window) % window, (window - w % window) % window
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(x: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    hp, wp = padded
    b = x.shape[0] // ((hp // window) * (wp // window))
    x = x.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, : size[0], : size[1]].contiguous()


class Block(nn.Module):
    def __init__(self, *, dim: int, heads: int, mlp_ratio: float, window: int, grid: tuple[int, int]):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim=dim, heads=heads, grid=grid if window == 0 else (window, window))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim=dim, hidden=int(dim * mlp_ratio))
        self.window = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window > 0:
            size = x.shape[1:3]
            x, padded = window_partition(x, self.window)
            x = window_unpartition(self.attn(x), self.window, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM's image encoder: ViT with windowed + global attention and a 256-channel neck.

    Arguments:
      img_size (int): input size the absolute positions were trained at (1024 for SAM).
      patch (int): patch size (16).
      dim (int): embedding width (768 for ViT-B).
      depth (int): number of blocks (12 for ViT-B).
      heads (int): attention heads (12 for ViT-B).
      mlp_ratio (float): MLP hidden width over dim (4).
      window (int): window size of the local-attention blocks (14).
      global_blocks (tuple[int, ...]): indices of the global-attention blocks ((2, 5, 8, 11)).
      neck_dim (int): output channels (256).
    """

    def __init__(self, *, img_size: int = 1024, patch: int = 16, dim: int = 768, depth: int = 12,
                 heads: int = 12, mlp_ratio: float = 4.0, window: int = 14,
                 global_blocks: tuple[int, ...] = (2, 5, 8, 11), neck_dim: int = 256):
        super().__init__()
        grid = (img_size // patch, img_size // patch)
        self.patch_embed = PatchEmbed(patch=patch, dim=dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, *grid, dim))
        self.blocks = nn.ModuleList(
            Block(dim=dim, heads=heads, mlp_ratio=mlp_ratio, window=0 if i in global_blocks else window, grid=grid)
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(dim, neck_dim, kernel_size=1, bias=False),
            LayerNorm2d(neck_dim),
            nn.Conv2d(neck_dim, neck_dim, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(neck_dim),
        )
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns: B×neck_dim×H/16×W/16 features."""
        x = self.patch_embed(x)
        pos = self.pos_embed
        if pos.shape[1:3] != x.shape[1:3]:
            # Tiles smaller than SAM's 1024 input: resize the absolute positions to the grid.
            pos = F.interpolate(pos.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bicubic",
                                align_corners=False).permute(0, 2, 3, 1)
        x = x + pos
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


class SamVitEncoder(nn.Module):
    """SAM ViT image encoder + simple feature pyramid (ViTDet) → strides 4, 8, 16, 32.

    Arguments:
      image_encoder (ImageEncoderViT): the ViT (its weights live under ``image_encoder.``).
      neck_dim (int): channels of the ViT's output.
    """

    def __init__(self, *, image_encoder: ImageEncoderViT, neck_dim: int):
        super().__init__()
        self.image_encoder = image_encoder
        c = neck_dim
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(c, c // 2, 2, stride=2), group_norm(c // 2), nn.GELU(),
            nn.ConvTranspose2d(c // 2, c // 4, 2, stride=2),
        )
        self.up8 = nn.ConvTranspose2d(c, c // 2, 2, stride=2)
        self.down32 = nn.MaxPool2d(2)
        self.out_channels = (c // 4, c // 2, c, c)

    @classmethod
    def from_config(cls, config: ModelConfig, *, load_weights: bool = True) -> SamVitEncoder:
        vit = ImageEncoderViT(
            img_size=config.vit_img_size, patch=config.vit_patch, dim=config.vit_dim,
            depth=config.vit_depth, heads=config.vit_heads, mlp_ratio=config.vit_mlp_ratio,
            window=config.vit_window, global_blocks=config.vit_global_blocks, neck_dim=config.vit_neck_dim,
        )
        if config.encoder_weights and load_weights:
            weights = Path(config.encoder_weights)
            if not weights.is_file():
                raise CheckpointError(
                    f"{weights}: SAM encoder weights not found. Download SAM's sam_vit_b_01ec64.pth "
                    "(github.com/facebookresearch/segment-anything, 'Model Checkpoints') and convert it once: "
                    f"python -m napari_dfa.model.import_sam sam_vit_b_01ec64.pth {weights}"
                )
            load_safetensors_into(vit, weights, prefix=SAM_PREFIX)
        elif not config.encoder_weights:
            logger.warning("sam-vit-b encoder built without weights: convert SAM's checkpoint with "
                        "import_sam_weights() and set encoder_weights")
        return cls(image_encoder=vit, neck_dim=config.vit_neck_dim)

    def freezable(self) -> nn.Module:
        """The part the ``freeze_encoder`` switch freezes: the pretrained ViT, not the pyramid."""
        return self.image_encoder

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Returns: four feature maps at strides 4, 8, 16, 32."""
        trainable = any(p.requires_grad for p in self.image_encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            f16 = self.image_encoder(x)
        return [self.up4(f16), self.up8(f16), f16, self.down32(f16)]


def import_sam_weights(pth_path: str | os.PathLike, out_safetensors: str | os.PathLike) -> Path:
    """Convert SAM's official weights (``sam_vit_b_01ec64.pth``, a pickle) to a safetensors file
    holding only the ``image_encoder.*`` tensors, so napari-dfa never unpickles at run time.

    The pickle is read once with ``torch.load(weights_only=True)``, which refuses arbitrary objects.
    Returns the path written (atomically: temp file in the same folder, then rename).
    """
    from safetensors.torch import save_file

    pth_path, out = Path(pth_path), Path(out_safetensors)
    if not pth_path.is_file():
        raise CheckpointError(f"{pth_path}: SAM weights file not found")
    try:
        state = torch.load(pth_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{pth_path}: cannot read as a PyTorch weights file ({exc})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{pth_path}: expected a state dict, found {type(state).__name__}")
    tensors = {k: v.contiguous().clone() for k, v in state.items()
               if isinstance(k, str) and k.startswith(SAM_PREFIX) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{pth_path}: no '{SAM_PREFIX}*' tensors: not a SAM checkpoint")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "sam-image-encoder", "source": pth_path.name})
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("wrote %d SAM image-encoder tensors from %s to %s", len(tensors), pth_path, out)
    return out

