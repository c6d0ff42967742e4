"""timm backbones as encoders (``encoder = "timm:<name>"``), an optional extra.

timm pulls torchvision, which does not import beside the CPU torch build this project pins, so
timm is imported only here and only when such an encoder is built; a missing timm gives a
ConfigError saying how to install it. Weights come from a local file (``encoder_weights``),
never from the network: hospitals and clusters often have none.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

WANTED_STRIDES = (4, 8, 16, 32)


def _import_timm():
    try:
        import timm  # noqa: PLC0415 - optional extra, imported on use only
    except Exception as exc:  # ImportError, or torchvision failing to import beside this torch
        raise ConfigError(
            f"encoder 'timm:...' needs the optional timm extra, which could not be imported ({exc}); "
            "install it with `pip install napari-dfa[timm]` or use the built-in encoder (encoder = \"conv\")"
        ) from None
    return timm


class TimmEncoder(nn.Module):
    """A timm model created with ``features_only=True``, keeping the stages at strides 4–32.

    Arguments:
      name (str): timm model name, e.g. ``"convnext_tiny"``.
      weights (str | None): local weights file (``.safetensors``, or whatever timm's
        ``load_checkpoint`` reads); None: random initialisation.
    """

    def __init__(self, *, name: str, weights: str | None = None):
        super().__init__()
        timm = _import_timm()
        try:
            self.backbone = timm.create_model(name, pretrained=False, features_only=True)
        except Exception as exc:
            raise ConfigError(f"timm cannot build encoder {name!r} with features_only=True ({exc})") from None
        reductions = list(self.backbone.feature_info.reduction())
        missing = [s for s in WANTED_STRIDES if s not in reductions]
        if missing:
            raise ConfigError(
                f"timm encoder {name!r} has feature strides {reductions}; strides {missing} are missing "
                "(napari-dfa needs 4, 8, 16 and 32)"
            )
        self.indices = [reductions.index(s) for s in WANTED_STRIDES]
        channels = self.backbone.feature_info.channels()
        self.out_channels = tuple(channels[i] for i in self.indices)
        if weights:
            self._load(Path(weights))

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise CheckpointError(f"{path}: timm encoder weights file not found")
        if path.suffix != ".safetensors":
            # Never unpickle: timm's hub ships model.safetensors next to the old .bin/.pth files.
            raise CheckpointError(f"{path}: timm encoder weights must be a .safetensors file "
                                  "(timm's hub publishes model.safetensors for its models)")
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable .safetensors file ({exc})") from None
        # features_only models drop the classifier head: ignore its keys.
        result = self.backbone.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise CheckpointError(f"{path}: weights miss {len(result.missing_keys)} encoder tensors, "
                                  f"e.g. {result.missing_keys[:3]}")
        logger.info("loaded timm encoder weights from %s", path)

    def freezable(self) -> nn.Module:
        return self.backbone

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Returns: four feature maps at strides 4, 8, 16, 32 (channels first)."""
        features = self.backbone(x)
        out = []
        for i in self.indices:
            f = features[i]
            # Some timm models (e.g. Swin) return channels-last features.
            if f.shape[1] != self.out_channels[len(out)] and f.shape[-1] == self.out_channels[len(out)]:
                f = f.permute(0, 3, 1, 2)
            out.append(f.contiguous())
        return out
