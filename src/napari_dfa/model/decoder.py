"""Two-way class-token decoder with Dynamic Focal Attention (DESIGN.md §1).

One learned token per class. Each layer:

1. token self-attention;
2. token → pixel cross-attention (each class token reads the image; softmax over pixels);
3. MLP on the tokens;
4. pixel → token cross-attention with the DFA bias: logit[p, c] = q_p·k_c/√d + b_c, softmax over
   the K class tokens, b_c added to every head.

Then a final token → pixel attention and the mask head: token → MLP → e_c, m_c(x) = e_c·F(x), where
F = FPN stride-4 features + the updated memory upsampled ×4 (as SAM upsamples its transformer-updated
image embedding into the mask features). Without that second term step 4 — the only place b_c acts —
would reach the masks only through the final token read-out, and b_c would barely move any pixel.

Why the bias sits only in step 4: softmax is shift-invariant along its own axis, so a per-class
constant in step 2 (softmax over pixels) cancels and receives zero gradient. ``token_pixel_bias``
exists only so a test can insert such a constant there and show that nothing changes.
"""

from __future__ import annotations

import torch
from torch import nn

from .pixel_decoder import MemoryUpsampler, sine_position_encoding


def _embedding(num: int, dim: int) -> nn.Embedding:
    """``nn.Embedding(num, dim)`` initialised as torch does (N(0, 1), same random draws), except on
    the ``meta`` device, where ``normal_`` would import ``torch._dynamo`` (~1.4 s of a first click)
    only to check a checkpoint's tensor shapes (:mod:`napari_dfa.model.shapes`)."""
    weight = torch.empty(num, dim)
    if not weight.is_meta:
        nn.init.normal_(weight)
    return nn.Embedding(num, dim, _weight=weight)


class Attention(nn.Module):
    """Multi-head attention that can add a logit bias and return its probabilities.

    Arguments:
      dim (int): width of queries, keys and values.
      heads (int): number of heads.
    """

    def __init__(self, *, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)  # B×heads×N×c

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                logit_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Arguments: q B×Nq×d, k and v B×Nk×d; logit_bias broadcastable to B×heads×Nq×Nk.

        Returns: (output B×Nq×d, attention probabilities B×heads×Nq×Nk, softmax over keys).
        """
        q, k, v = self._split(self.q_proj(q)), self._split(self.k_proj(k)), self._split(self.v_proj(v))
        logits = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
        if logit_bias is not None:
            logits = logits + logit_bias
        attn = logits.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).flatten(2)
        return self.out_proj(out), attn


class MLP(nn.Module):
    def __init__(self, *, dims: tuple[int, ...]):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


class TwoWayDFALayer(nn.Module):
    """One decoder layer (steps 1–4 above). Arguments: dim, heads, mlp_dim."""

    def __init__(self, *, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.self_attn = Attention(dim=dim, heads=heads)
        self.norm1 = nn.LayerNorm(dim)
        self.token_to_pixel = Attention(dim=dim, heads=heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dims=(dim, mlp_dim, dim))
        self.norm3 = nn.LayerNorm(dim)
        self.pixel_to_token = Attention(dim=dim, heads=heads)
        self.norm4 = nn.LayerNorm(dim)

    def forward(self, tokens, token_pe, memory, memory_pe, class_bias, token_pixel_bias=None):
        """Returns: (tokens B×K×d, memory B×N×d, pixel → token attention B×heads×N×K)."""
        # 1. Class tokens exchange information.
        q = tokens + token_pe
        tokens = self.norm1(tokens + self.self_attn(q, q, tokens)[0])
        # 2. Each class token reads the image (softmax over pixels; a per-class shift cancels here).
        offset = None if token_pixel_bias is None else token_pixel_bias[None, None, :, None]
        tokens = self.norm2(tokens + self.token_to_pixel(tokens + token_pe, memory + memory_pe, memory,
                                                         logit_bias=offset)[0])
        # 3. Token MLP.
        tokens = self.norm3(tokens + self.mlp(tokens))
        # 4. Each pixel chooses among the classes: softmax over K, with the DFA bias b_c.
        update, attn = self.pixel_to_token(memory + memory_pe, tokens + token_pe, tokens,
                                           logit_bias=class_bias[None, None, None, :])
        memory = self.norm4(memory + update)
        return tokens, memory, attn


class DFADecoder(nn.Module):
    """Class-token decoder with the DFA bias, final token → pixel attention and mask head.

    Arguments:
      num_classes (int): K (one token per class).
      dim (int): token / memory width d.
      depth (int): number of two-way layers.
      heads (int): attention heads.
      mlp_dim (int): token MLP hidden width.
      mask_dim (int): channels of the stride-4 mask features F.

    The mask features are the FPN's stride-4 features plus ``memory_upsampler`` of the memory the
    two-way layers updated (SAM style), so the pixel → class attention shapes F directly.
    """

    def __init__(self, *, num_classes: int, dim: int, depth: int, heads: int, mlp_dim: int, mask_dim: int):
        super().__init__()
        self.class_tokens = _embedding(num_classes, dim)
        self.token_pe = _embedding(num_classes, dim)
        self.layers = nn.ModuleList(TwoWayDFALayer(dim=dim, heads=heads, mlp_dim=mlp_dim) for _ in range(depth))
        self.final_attn = Attention(dim=dim, heads=heads)
        self.final_norm = nn.LayerNorm(dim)
        self.mask_mlp = MLP(dims=(dim, dim, mask_dim))
        self.memory_upsampler = MemoryUpsampler(memory_dim=dim, dim=mask_dim)
        self.dim = dim
        # Test-only hook: a per-class constant in the token → pixel logits (must change nothing).
        self.token_pixel_bias: nn.Parameter | None = None

    def forward(self, memory: torch.Tensor, mask_features: torch.Tensor, class_bias: torch.Tensor):
        """Arguments: memory B×d×h×w (stride 16), mask_features B×C×H4×W4 (stride 4, from the FPN),
        class_bias (K,).

        Returns: (mask logits B×K×H4×W4, last layer's pixel → token attention averaged over heads,
        B×K×h×w, a distribution over classes at every memory position, the mask features the
        logits read: mask_features + the upsampled updated memory, B×C×H4×W4).
        The mask logits are e_c · (mask_features + upsampled updated memory).
        """
        b, _, h, w = memory.shape
        memory_pe = sine_position_encoding(h, w, self.dim, device=memory.device, dtype=memory.dtype)
        memory_pe = memory_pe.flatten(1).T[None]  # 1×N×d
        memory = memory.flatten(2).transpose(1, 2)  # B×N×d
        tokens = self.class_tokens.weight[None].expand(b, -1, -1)
        token_pe = self.token_pe.weight[None]
        class_bias = class_bias.to(memory.dtype)
        attn = None
        for layer in self.layers:
            tokens, memory, attn = layer(tokens, token_pe, memory, memory_pe, class_bias, self.token_pixel_bias)
        # Final token → pixel read-out before the mask head.
        offset = None if self.token_pixel_bias is None else self.token_pixel_bias[None, None, :, None]
        tokens = self.final_norm(tokens + self.final_attn(tokens + token_pe, memory + memory_pe, memory,
                                                          logit_bias=offset)[0])
        embeddings = self.mask_mlp(tokens)  # B×K×C
        updated = memory.transpose(1, 2).reshape(b, -1, h, w)  # B×d×h×w, after the last two-way layer
        mask_features = mask_features + self.memory_upsampler(updated, mask_features.shape[-2:])
        masks = torch.einsum("bkc,bchw->bkhw", embeddings, mask_features)
        focus = attn.mean(dim=1).transpose(1, 2).reshape(b, -1, h, w)  # B×K×h×w
        return masks, focus, mask_features
