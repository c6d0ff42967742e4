"""napari-dfa: whole-slide tissue segmentation with Dynamic Focal Attention, in napari and headless.

Public API (imported lazily, so that napari discovering the plugin does not import torch):

- :func:`open_slide` / :class:`Slide` — lazy multiscale whole-slide images.
- :func:`load_model` / :class:`Segmenter` — DFA models from ``.safetensors`` checkpoints.
- :func:`segment` — tiled, seamless, resumable whole-slide inference; its options grouped in
  :class:`Tiling` (tile, overlap, tissue mask, store chunk) and :class:`Runtime` (device, batch
  size, threads, precision, tile cache).
"""

from __future__ import annotations

from importlib import import_module

from .errors import Cancelled, CheckpointError, ConfigError, DataError, DFAError, SlideError

__version__ = "0.1.0"

_LAZY = {
    "open_slide": "napari_dfa.slide",
    "Slide": "napari_dfa.slide",
    "load_model": "napari_dfa.model",
    "Segmenter": "napari_dfa.model",
    "segment": "napari_dfa.inference",
    "Tiling": "napari_dfa.inference",
    "Runtime": "napari_dfa.inference",
}

__all__ = [
    "Cancelled",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DFAError",
    "SlideError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'napari_dfa' has no attribute {name!r}")
