"""The tensors a model config has, without building the model (no memory, no initialisation).

Used by the checkpoint loader to check a file's tensor names, shapes and dtypes before anything
is read (see :mod:`napari_dfa.model.validate`); kept apart from ``validate`` so that the checkpoint
reader imports no network code (``sam_vit`` imports the checkpoint reader).
"""

from __future__ import annotations

import torch

from .config import ModelConfig
from .dfa_model import build_model

# torch dtype -> the dtype names of the safetensors header
_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}


def expected_tensors(config: ModelConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, safetensors dtype)}`` of the state dict of a model of ``config``, from a
    model built on the ``meta`` device (call it after the config's bounds were checked)."""
    with torch.device("meta"):
        model = build_model(config, load_encoder_weights=False)
    return {k: (tuple(v.shape), _ST_DTYPES.get(v.dtype, str(v.dtype))) for k, v in model.state_dict().items()}
