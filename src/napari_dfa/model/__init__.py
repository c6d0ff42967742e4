"""The DFA segmentation model (no Qt): encoder → FPN pixel decoder → class-token decoder with a
learned per-class attention bias, checkpoints as ``.safetensors`` and the :class:`Segmenter` facade.

    from napari_dfa.model import load_model
    seg = load_model("demo")            # or a path to a .safetensors checkpoint
    labels = seg.predict(rgb_uint8)     # H×W uint8, classes 1..K
    seg.class_bias()                    # the learned b_c per class
"""

from __future__ import annotations

from .bias import ClassBias, bias_l2_penalty, param_groups
from .checkpoint import CheckpointContents, read_checkpoint, write_checkpoint
from .config import BIAS_MODES, PRESETS, ModelConfig
from .dfa_model import DFASegModel, build_model
from .device import resolve_device
from .sam_vit import ImageEncoderViT, import_sam_weights
from .segmenter import DEMO_MODEL, Segmenter, load_model

__all__ = [
    "BIAS_MODES",
    "CheckpointContents",
    "ClassBias",
    "DEMO_MODEL",
    "DFASegModel",
    "ImageEncoderViT",
    "ModelConfig",
    "PRESETS",
    "Segmenter",
    "bias_l2_penalty",
    "build_model",
    "import_sam_weights",
    "load_model",
    "param_groups",
    "read_checkpoint",
    "resolve_device",
    "write_checkpoint",
]
