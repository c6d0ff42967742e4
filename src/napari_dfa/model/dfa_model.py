"""DFASegModel composes encoder → FPN pixel decoder → DFA decoder; ``build_model`` makes one from a config."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .bias import ClassBias
from .config import ModelConfig
from .decoder import DFADecoder
from .encoder import build_encoder
from .pixel_decoder import FPNPixelDecoder
from .pixel_head import PixelHead
from .tissue_norm import glass_cells, glass_context

logger = logging.getLogger(__name__)

# ImageNet statistics (SAM uses the same, scaled to 0–255).
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


class DFASegModel(nn.Module):
    """Semantic segmentation with one class token per class and a per-class attention bias.

    Arguments:
      config (ModelConfig): the configuration the parts were built from (kept for checkpoints).
      encoder (nn.Module): image encoder, features at strides 4, 8, 16, 32 (``out_channels``).
      pixel_decoder (FPNPixelDecoder): features → stride-4 FPN features, stride-16 memory.
      decoder (DFADecoder): the two-way class-token decoder and mask head; the mask features are
        the FPN stride-4 features plus the decoder-updated memory upsampled ×4 (SAM style).
      bias (ClassBias): b_c of the pixel → token attention (mode ``dfa-out``: also of the output logits).
      head (PixelHead | None): the pixel head a fine-tune on corrections fits; it reads the image
        too, so :meth:`decode` then needs it.
    """

    def __init__(self, *, config: ModelConfig, encoder: nn.Module, pixel_decoder: FPNPixelDecoder,
                 decoder: DFADecoder, bias: ClassBias, head: PixelHead | None = None):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.pixel_decoder = pixel_decoder
        self.decoder = decoder
        self.bias = bias
        self.head = head  # learnt from a pathologist's strokes (model.pixel_head); None: the decoder's logits
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> dict:
        """Arguments: x, B×3×H×W float in [0, 1], H and W multiples of ``config.input_multiple``.

        Returns: dict with ``logits`` (B×K×H×W, channel k = label k + 1; in mode ``dfa-out`` they
        include b_c) and ``attention``
        (the last layer's pixel → class attention averaged over heads, B×K×H/16×W/16, summing to 1
        over classes; None unless ``return_attention``).
        """
        size = x.shape[-2:]
        if size[0] % 32 or size[1] % 32:
            raise ValueError(f"input height and width must be multiples of 32, got {tuple(size)}")
        glass = self.find_glass(x)
        return self.decode(self.encode(x, glass=glass), size, return_attention=return_attention, glass=glass,
                           image=x)

    def find_glass(self, x: torch.Tensor) -> torch.Tensor | None:
        """The glass cells (B×1×H/32×W/32 bool) the GroupNorms leave out of their statistics, of a
        B×3×H×W batch in [0, 1]; None when there is none or ``config.norm_excludes_glass`` is off
        (see :mod:`napari_dfa.model.tissue_norm`)."""
        return glass_cells(x) if self.config.norm_excludes_glass else None

    def encode(self, x: torch.Tensor, *, glass: torch.Tensor | None | str = "find") -> list[torch.Tensor]:
        """The encoder's features (strides 4, 8, 16, 32) of a B×3×H×W batch in [0, 1]. Split from
        :meth:`decode` so that fine-tuning with a frozen encoder computes them once and caches them.
        ``glass``: the batch's glass cells (:meth:`find_glass`, which "find" calls)."""
        if isinstance(glass, str):
            glass = self.find_glass(x)
        x = (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)
        with glass_context(glass):
            return self.encoder(x)

    def decode(self, features: list[torch.Tensor], size, return_attention: bool = False, *,
               glass: torch.Tensor | None = None, image: torch.Tensor | None = None) -> dict:
        """Everything after the encoder: pixel decoder, DFA decoder, logits upsampled to ``size``
        (H, W). ``glass``: the glass cells of the image the features are of (:meth:`find_glass`);
        ``image``: that image (B×3×H×W in [0, 1]), which a model with a pixel head needs.
        Returns what :meth:`forward` returns."""
        masks, focus, fused = self.decode_masks(features, glass=glass)
        if self.head is not None:
            if image is None:
                raise ValueError("this model has a pixel head: decode() needs the image as well as its features")
            logits = self.head(image[..., :size[0], :size[1]], torch.cat([fused, masks], 1), masks)
        else:
            logits = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        return {"logits": logits, "attention": focus if return_attention else None}

    def decode_masks(self, features: list[torch.Tensor], *, glass: torch.Tensor | None = None):
        """The DFA decoder's stride-4 class logits, its focus maps and the mask features they read
        (what the pixel head takes)."""
        with glass_context(glass):
            mask_features, memory = self.pixel_decoder(features)
            bias = self.bias()
            masks, focus, fused = self.decoder(memory, mask_features, bias)
        if self.bias.reaches_output:
            # dfa-out: b_c is also class c's output offset (a constant per class commutes with the
            # bilinear upsampling, so adding it at stride 4 is the same as after it).
            masks = masks + bias.to(masks.dtype)[None, :, None, None]
        return masks, focus, fused

    def set_encoder_frozen(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) the encoder part that holds pretrained weights."""
        part = self.encoder.freezable() if hasattr(self.encoder, "freezable") else self.encoder
        for p in part.parameters():
            p.requires_grad_(not frozen)


def build_model(config: ModelConfig, *, frequencies: Sequence[float] | None = None,
                load_encoder_weights: bool = True) -> DFASegModel:
    """A fresh model for ``config``.

    Arguments:
      config (ModelConfig): sizes and bias mode.
      frequencies (sequence of K floats | None): training-pixel frequency f_c of every class; the
        cffa / anchored prior and δ's warm start come from it. None: uniform (δ starts at 0).
      load_encoder_weights (bool): load ``config.encoder_weights``; False when a checkpoint
        that already holds every weight is being restored.
    """
    encoder = build_encoder(config, load_weights=load_encoder_weights)
    pixel_decoder = FPNPixelDecoder(in_channels=tuple(encoder.out_channels), dim=config.pixel_dim,
                                    memory_dim=config.decoder_dim)
    decoder = DFADecoder(num_classes=config.num_classes, dim=config.decoder_dim, depth=config.decoder_depth,
                         heads=config.decoder_heads, mlp_dim=config.decoder_mlp_dim, mask_dim=config.pixel_dim)
    bias = ClassBias(num_classes=config.num_classes, mode=config.bias_mode, gamma=config.gamma,
                     delta_init_scale=config.delta_init_scale, frequencies=frequencies,
                     difficulty_dice=config.difficulty_dice)
    head = None
    if config.head_sigmas:
        head = PixelHead(num_classes=config.num_classes, deep_channels=config.pixel_dim + config.num_classes,
                         sigmas=config.head_sigmas, hidden=config.head_hidden, smooth=config.head_smooth,
                         stride=config.head_stride, context=config.head_context)
    model = DFASegModel(config=config, encoder=encoder, pixel_decoder=pixel_decoder, decoder=decoder, bias=bias,
                        head=head)
    if config.freeze_encoder:
        model.set_encoder_frozen(True)
    n = sum(p.numel() for p in model.parameters())
    logger.debug("built %s model (%s encoder, bias %s): %d parameters", config.preset, config.encoder,
              config.bias_mode, n)
    return model
