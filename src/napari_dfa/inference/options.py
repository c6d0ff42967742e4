"""The options of :func:`napari_dfa.inference.segment`, grouped (as TIAToolbox's
``IOSegmentorConfig`` groups its segmentor's): :class:`Tiling` — the lattice and what is written
(they change the labels or the store), and :class:`Runtime` — where and how the passes run (they
change the speed, not the labels; ``precision`` excepted). Each field is documented here once;
the defaults are the ones segment uses when an object is not given."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from .tile_cache import TileCache

__all__ = ["Runtime", "Tiling", "pick"]


@dataclass(frozen=True)
class Tiling:
    """The tile lattice of a run and the store it writes.

    Arguments:
      tile: forward-pass tile edge (a multiple of the model's ``input_multiple``); None (default):
        tiles near 1024 pixels fitted to the level (:func:`napari_dfa.inference.tiling.fit_axis`).
      overlap: pixels shared by neighbouring tiles (blended; None: 32); with ``tile=None`` the
        least overlap of the fitted lattice.
      tissue_mask: skip tiles over glass and give glass beside tissue label 0 (at the tissue
        mask's resolution); False: every pixel gets a class.
      chunk: chunk edge of the zarr store (with ``out``).
    """

    tile: int | None = None
    overlap: int | None = None
    tissue_mask: bool = True
    chunk: int = 512


@dataclass(frozen=True)
class Runtime:
    """Where and how the forward passes run.

    Arguments:
      device: "auto" | "cuda" | "mps" | "cpu" (the model is moved there).
      batch_size: tiles per forward pass. Default: on GPUs ~8 Mpx of tiles; on CPUs one tile per
        pass on one torch thread, as many passes at once as torch has threads (labels then do not
        depend on the thread count; restored after the call). Given on a CPU: that many tiles per
        pass, one pass at a time on torch's threads.
      read_workers: threads reading tiles ahead of the model when ``threads`` (default 2).
      channels_last: the model's memory format (None: channels-last on CPU and CUDA, where its
        convolutions run faster; the model keeps it after the call).
      threads: read and blend in threads beside the model (None: yes — except with an explicit
        ``batch_size`` on a CPU of at most 4 cores that torch all uses, where threads beside
        torch's would stall its parallel regions; the default one-thread passes have none).
      tile_workers: on a CPU without ``batch_size``, the one-thread passes run at once (None: as
        many as torch has threads). The labels do not depend on it.
      precision: the forward pass's arithmetic for this call (see
        :attr:`napari_dfa.model.Segmenter.precision`: ``"auto"``, ``"fp32"``, ``"bf16"``); None:
        the model's own (``"auto"``: bfloat16 on CUDA, float32 on CPUs).
      tile_cache: a :class:`~napari_dfa.inference.tile_cache.TileCache`: lattice tiles it holds for
        this image, level and model are not computed again, and computed ones are added (labels
        only; ignored for the other outputs). Panning a view then runs only the tiles it did not
        cover before.
    """

    device: str = "auto"
    batch_size: int | None = None
    read_workers: int | None = None
    channels_last: bool | None = None
    threads: bool | None = None
    tile_workers: int | None = None
    precision: str | None = None
    tile_cache: TileCache | None = None


def pick(cls, options: Mapping[str, Any]):
    """``cls`` (:class:`Tiling` or :class:`Runtime`) made of the entries of ``options`` that name
    its fields; the others keep their defaults (e.g. from the predict command's options)."""
    return cls(**{f.name: options[f.name] for f in fields(cls) if f.name in options})
