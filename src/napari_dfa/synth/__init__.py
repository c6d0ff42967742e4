"""Synthetic H&E tissue with known class frequency and class difficulty (no Qt, no torch).

The offline stand-in for BCSS: classes 1 inflammatory, 2 tumour, 3 stroma, 4 other, 5 necrosis
(``napari_dfa.classes.SYNTHETIC``), 0 = ignore / outside the ROI. Frequency and difficulty of each
class are set independently in :class:`SynthConfig`; the defaults hold a rare-and-easy class
(inflammatory), a common-and-easy one (tumour), a common-and-hard one (stroma, a look-alike of
"other"), and a rare-and-hard one (necrosis, a look-alike of tumour).

- :func:`generate_tile` — one image tile and its mask, deterministic by seed.
- :func:`write_dataset` — tiles in the SAM-Path layout (``img/``, ``mask/``, ``cv.csv``).
- :func:`write_slide` — a pyramidal tiled TIFF slide and its truth labels, rendered window by window.

What the two knobs mean, precisely:

- **frequency** f_c: each tile's class mix is drawn from Dirichlet(concentration · f); within a
  split the mixes are rescaled so that their mean is f; within a tile, class regions (warped
  Voronoi cells) are assigned greedily to the quotas and their borders then moved until the areas
  match. Measured over a dataset the shares land within about half a percentage point of f.
- **difficulty** d_c with look-alike class l: the class's appearance parameters (stain
  concentrations, fibres, nucleus cover, size, shape, chromatin, holes, patchiness) become
  (1 − d·m)·A_c + d·m·A_l with m = ``max_overlap`` (0.85), and its borders are blurred with a
  Gaussian-like sigma d · ``border_blur`` px: its background stain bleeds into the neighbours and its
  nuclei scatter across the border with the blurred weight as probability. The truth mask keeps
  the sharp border. A class without look-alike only gets the blur.
"""

from __future__ import annotations

from .config import Appearance, ClassSpec, SynthConfig, default_classes
from .tiles import DATASET_CSV, DATASET_JSON, generate_tile, label_frequencies
from .writers import truth_path_for
from . import writers as _writers

__all__ = [
    "Appearance",
    "ClassSpec",
    "SynthConfig",
    "default_classes",
    "generate_tile",
    "write_dataset",
    "write_slide",
    "truth_path_for",
    "label_frequencies",
    "DATASET_CSV",
    "DATASET_JSON",
]


def write_dataset(root, config: SynthConfig | None = None, n_train: int = 32, n_val: int = 8,
                  n_test: int = 8, *, tile: int = 256, seed: int = 0, progress=None, cancel=None):
    """Write tiles in the SAM-Path layout; see :func:`napari_dfa.synth.writers.write_dataset`."""
    return _writers.write_dataset(root, config or SynthConfig(), n_train, n_val, n_test, tile=tile, seed=seed,
                  progress=progress, cancel=cancel)


def write_slide(path, config: SynthConfig | None = None, size=(8192, 8192), seed: int = 0, *,
                mpp: float | None = None, tile: int = 256, compression: str = "jpeg", quality: int = 85,
                progress=None, cancel=None):
    """Write a pyramidal slide and its truth; see :func:`napari_dfa.synth.writers.write_slide`."""
    return _writers.write_slide(path, config or SynthConfig(), size=size, seed=seed, mpp=mpp, tile=tile,
                  compression=compression, quality=quality, progress=progress, cancel=cancel)
