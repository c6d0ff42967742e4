"""Whole-slide inference: tiled, seamless, bounded memory, cancellable and resumable (no Qt).

:func:`segment` runs a :class:`~napari_dfa.model.Segmenter` over a region (or the whole level) of
a slide or an image:

1. tiles on a lattice fixed by the level (:mod:`.tiling`): by default ~1024-pixel tiles fitted
   to the level with at least 32 pixels of overlap and at most 10 % more pixels computed than the
   level has; a region is segmented with the lattice tiles that touch it, so a pixel gets the same
   label from any region. Tiles over glass are skipped using a tissue mask from a coarse level
   (:mod:`.tissue`) and get label 0, and so does the glass in tiles at the edge of the tissue (at
   the mask's resolution);
2. tiles are read a few ahead of the model (in threads where a core is free: on GPUs and on CPUs
   that have more cores than torch uses; else between forward passes, which is faster on small
   CPUs), batched within a tile row and run under ``torch.inference_mode`` — channels-last on CPU
   and CUDA, bfloat16 autocast on CUDA (and on CPUs with ``precision="bf16"``), tiles staged in
   pinned memory and uploaded on a side stream, results downloaded without blocking, so that
   reading and blending overlap the GPU;
3. beside the model (on its device) each tile's argmax gives the labels of the pixels only that
   tile covers; **logits** of the pixels tiles share are blended with a raised-cosine window
   (:mod:`.blend`). Logits rather than softmax probabilities: a weighted mean of logits is the
   log-linear pool of the tiles' predictions, costs no softmax per tile, and the argmax needs no
   normalisation; probabilities, when asked for, are the softmax of the blended logits (every
   pixel is then blended);
4. finished cells become uint8 labels at once, and whole chunk rows are written to the OME-Zarr
   store by a writer thread (:class:`.blend.ZarrSink`), which records the rows done after each
   write. Float accumulators exist only for the cells under tiles in flight (the overlap strip of
   one tile row), so memory does not grow with the slide's height, and only by the strip with its
   width.

Resume restarts at the first tile row that reaches below the rows already written and recomputes
it with the same batches, so a resumed run equals an uninterrupted one bit for bit.

This module is the API and the run's setup; the tile loop is :mod:`.scheduler`, the band reads
:mod:`.bands` (beside :mod:`.reader`), the CUDA transfers :mod:`.cuda_io`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .blend import TileBlender, MemorySink, ZarrSink
from .cuda_io import cudnn_autotune
from .reader import LevelReader, _is_slide
from .scheduler import GPU_BATCH_PIXELS, CacheSlot, TileRunner, cpu_tile_workers, default_batch, use_threads
from .options import Runtime, Tiling
from .tiling import TileGrid
from .tissue import tissue_mask_for
from ..classes import ClassSet
from ..errors import ConfigError

logger = logging.getLogger(__name__)

OUTPUTS = ("labels", "probabilities", "uncertainty", "focus")
__all__ = ["GPU_BATCH_PIXELS", "OUTPUTS", "Runtime", "SegmentResult", "Tiling", "check_same_source",
           "model_fingerprint", "segment", "source_key"]


@dataclass
class SegmentResult:
    """What :func:`segment` produced.

    ``labels`` is h×w uint8 over the region at ``level`` (a numpy array, or the store's level-0
    zarr array when written to disk). Display it with ``scale=(downsample, downsample)`` and
    ``translate=translate`` (level-0 pixels)."""

    labels: Any
    level: int
    region: tuple[int, int, int, int]
    downsample: float
    translate: tuple[float, float]
    class_names: list[str]
    class_colors: list[tuple[int, int, int]]
    probabilities: Any = None
    uncertainty: Any = None
    focus: Any = None
    path: Path | None = None
    completed: bool = True
    tiles_done: int = 0
    tiles_total: int = 0
    tiles_skipped: int = 0
    seconds: float = 0.0
    peak_float_bytes: int = 0  # most bytes the blending accumulators held at once
    model_seconds: float = 0.0  # time in forward passes (+ argmax, transfer back; on CUDA: device time)
    tiles_cached: int = 0  # tiles taken from the tile cache instead of the model
    tile_shape: tuple[int, int] = (0, 0)  # forward-pass tile (y, x) of the lattice
    overlap: tuple[int, int] = (0, 0)  # least overlap of neighbouring tiles (y, x)
    computed_pixels: int = 0  # pixels the forward passes saw (tiles × tile area, glass tiles included)

    @property
    def classes(self) -> ClassSet:
        """Names and colours of labels 1..K, for the label writers and layers."""
        return ClassSet.of(self.class_names, self.class_colors, name="model")


def model_fingerprint(model) -> str:
    """The identity of a model's weights and classes (resume refuses a different model); see
    :meth:`napari_dfa.model.Segmenter.fingerprint`."""
    return model.fingerprint()


def segment(slide_or_array, model, level=0, region=None, *, tiling: Tiling | None = None,
            runtime: Runtime | None = None, out=None, resume=False, outputs=("labels",),
            progress: Callable | None = None, cancel: Callable[[], bool] | None = None, stain=None,
            store_info: dict | None = None) -> SegmentResult:
    """Segment a slide level (or a region of it) tile by tile.

    Arguments:
      slide_or_array: a :class:`~napari_dfa.slide.Slide`, a path to one, or a Y×X×3 uint8
        numpy/dask array.
      model: a :class:`~napari_dfa.model.Segmenter`, or a checkpoint path / ``"demo"``.
      level: pyramid level, or ``"auto"`` for the level closest to the model's microns per pixel.
      region: (y0, x0, height, width) in ``level`` pixels; None for the whole level.
      tiling: a :class:`~napari_dfa.inference.options.Tiling` (tile, overlap, tissue mask, store
        chunk); None: its defaults.
      runtime: a :class:`~napari_dfa.inference.options.Runtime` (device, batch size, threads,
        precision, tile cache…); None: its defaults.
      out: None for in-memory arrays, or a path for an OME-Zarr labels store.
      resume: continue the store at ``out`` from the rows already written (same settings).
      outputs: any of "labels", "probabilities", "uncertainty", "focus".
      progress: ``progress(done, total, eta=seconds, skipped=n)`` after every batch.
      cancel: ``cancel() -> bool``; when it turns true the run stops after the current batch,
        keeps what was written and returns with ``completed=False``.
      stain: match the slide's stain to the model's training stain before the model sees it:
        True (fitted on this level, :func:`napari_dfa.inference.stain.slide_stain_match`), or a
        :class:`~napari_dfa.model.stain.StainMatch` made once for the slide (views of it then share
        one); None/False: pixels as stored. The tissue mask reads the stored pixels either way.
      store_info: kept in a new store's ``napari_dfa`` attributes beside the settings (e.g. the
        ``run_id`` of the predict run that made it, so that a retried task knows its own store).

    Returns:
      a :class:`SegmentResult`.
    """
    tiling = Tiling() if tiling is None else tiling
    runtime = Runtime() if runtime is None else runtime

    import torch

    from ..model import load_model
    from ..model.device import resolve_device, torch_threads

    t_start = time.perf_counter()
    opened = None
    if isinstance(slide_or_array, (str, Path)):
        from ..slide import open_slide

        slide_or_array = opened = open_slide(slide_or_array)
    if isinstance(model, (str, Path)):
        model = load_model(model)
    before_precision = model.precision
    try:
        unknown = set(outputs) - set(OUTPUTS)
        if unknown:
            raise ConfigError(f"unknown outputs {sorted(unknown)}; choose from {', '.join(OUTPUTS)}")
        if level == "auto":
            level = _auto_level(slide_or_array, model)
        if stain is True:
            from .stain import slide_stain_match

            stain = slide_stain_match(slide_or_array, model, level=level)
        src = LevelReader(data=slide_or_array, level=level, transform=stain or None)
        region = src.check_region(region)
        dev = resolve_device(runtime.device)
        model.to(dev)
        if runtime.precision is not None:
            model.precision = runtime.precision
        amp = model.autocast_dtype()
        arithmetic = "fp32" if amp is None else str(amp).removeprefix("torch.")
        channels_last = runtime.channels_last
        if channels_last is None:
            channels_last = True if dev.type in ("cpu", "cuda") else None
        if channels_last is not None:
            model.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        multiple = int(getattr(model, "input_multiple", 32))
        tile, overlap = tiling.tile, tiling.overlap
        grid = TileGrid(height=region[2], width=region[3], tile=None if tile is None else int(tile),
                        overlap=None if overlap is None else int(overlap), multiple=multiple,
                        origin=region[:2], extent=src.shape)
        k = len(model.class_names)
        extras = {n: (0 if n == "uncertainty" else k) for n in outputs if n != "labels"}
        settings = dict(level=src.level, region=list(region), tile=list(grid.tile_shape), overlap=list(grid.overlaps),
                        tissue_mask=bool(tiling.tissue_mask),
                        model=model_fingerprint(model) if out is not None else None)
        if arithmetic != "fp32":  # stores written in float32 keep the settings they always had
            settings["precision"] = arithmetic
        if stain:  # likewise: absent when the stain is not matched
            settings["stain"] = stain.describe()

        store, start_row = None, 0
        if out is not None:
            store, start_row = _open_store(out, resume, src, region, model, extras, settings, tiling.chunk,
                                           store_info)
            if store.completed:
                logger.info("%s: already complete, nothing to resume", store.path)
                return _result(src, region, model, grid, store=store, sink=None, done=grid.total,
                               total=grid.total, skipped=0, completed=True, seconds=time.perf_counter() - t_start)
            sink = ZarrSink(store=store, start=start_row, extras=extras)
        else:
            sink = MemorySink(shape=(region[2], region[3]), extras=extras)
        skip = np.zeros((grid.rows, grid.cols), dtype=bool)
        glass = None
        if tiling.tissue_mask:
            by, bx, bh, bw = grid.box()
            tm = tissue_mask_for(src, region, box=(region[0] + by, region[1] + bx, bh, bw))
            for i in range(grid.rows):
                for j in range(grid.cols):
                    y, x, h, w = grid.tile_box(i, j)
                    skip[i, j] = not tm.any_in(y, x, h, w)
            # The glass (connected components) is needed only when cells are written: found beside
            # the first reads and passes, not before them.
            tm.find_glass_in_background()
            glass = tm.glass_box
        blender = TileBlender(grid=grid, num_classes=k, outputs=set(outputs), sink=sink, glass=glass)
        first_row = grid.first_row_touching(start_row) if start_row else 0
        workers = cpu_tile_workers(dev, runtime.batch_size, torch, runtime.tile_workers)
        threaded = use_threads(runtime.threads, dev, torch, workers)
        cache = None
        if runtime.tile_cache is not None and not extras:
            cache = CacheSlot(runtime.tile_cache, src, model, dev, channels_last, arithmetic, stain)
        run = TileRunner(src=src, region=region, grid=grid, model=model, device=dev, blender=blender, skip=skip,
                      batch_size=1 if workers else (runtime.batch_size or default_batch(grid)),
                      read_workers=(2 if runtime.read_workers is None else runtime.read_workers) if threaded else 0,
                      want_focus="focus" in outputs, dense=bool(extras), progress=progress, cancel=cancel,
                      cache=cache, forward_workers=workers or 1)
        try:
            with cudnn_autotune(dev, torch), torch_threads(1 if workers else None):
                completed = run.run(first_row)
        finally:
            sink.close()
        if store is not None and completed:
            store.finish()
        logger.info("segment: %d tiles of %dx%d (%d skipped as glass) in %.1f s", run.done, *grid.tile_shape,
                    int(skip.sum()), time.perf_counter() - t_start)
        res = _result(src, region, model, grid, store=store, sink=sink, done=run.done, total=grid.total,
                      skipped=int(skip.sum()), completed=completed, seconds=time.perf_counter() - t_start)
        res.peak_float_bytes = run.peak_bytes
        res.model_seconds = run.model_seconds
        res.tiles_cached = len(run.hits)
        return res
    finally:
        model.precision = before_precision
        if opened is not None:
            opened.close()


def _auto_level(data, model) -> int:
    """The level nearest the model's µm/px (:func:`napari_dfa.slide.auto_level`); 0 for an array."""
    from ..slide.levels import auto_level

    return auto_level(data if _is_slide(data) else None, getattr(model, "mpp", None))


def _open_store(out, resume, src, region, model, extras, settings, chunk, store_info=None):
    from ..labels.store import LabelsStore  # here: zarr (~0.2-5 s to import) only when writing a store

    path = Path(out)
    key = source_key(src)
    if resume and path.exists():
        store = LabelsStore.open(path)
        info = store.info
        check_same_source(path, info, key, src.name)
        keys = set(settings) | {"precision", "stain"}  # absent: float32, stain as stored
        stored = {key: info.get(key) for key in keys}
        if stored != {key: settings.get(key) for key in keys} or sorted(info.get("extras", [])) != sorted(extras):
            raise ConfigError(f"{path}: cannot resume, the store was written with other settings "
                              f"({stored}, outputs {info.get('extras')}); rerun without --resume to start over")
        logger.info("%s: resuming after %d of %d rows", path, store.rows_done, region[2])
        return store, store.rows_done
    translate = (region[0] * src.downsample, region[1] * src.downsample)
    store = LabelsStore.create(path, shape=(region[2], region[3]), class_names=model.class_names,
                               class_colors=model.class_colors, chunk=chunk, downsample=src.downsample,
                               translate=translate, extras=extras,
                               info=dict(settings, **(store_info or {}), source=src.name, content_key=key,
                                         mpp=getattr(src.slide, "mpp", None),
                                         # the label levels then match the slide's (NGFF labels)
                                         image_downsamples=getattr(src.slide, "downsamples", None)))
    return store, 0


def source_key(src) -> str | None:
    """The content key of the slide a LevelReader reads (None for an array): what a store records,
    so that ``resume`` never continues one slide's store with another slide."""
    if src.slide is None:
        return None
    from ..slide.content import key_of_slide

    return key_of_slide(src.slide)


def check_same_source(path, info: dict, key: str | None, name: str) -> None:
    """ConfigError when the store at ``path`` (its attributes ``info``) was made from another
    slide than the one of content key ``key``. Stores written before keys were recorded pass."""
    stored = info.get("content_key")
    if key and stored and stored != key:
        raise ConfigError(f"{path}: cannot resume, the store was made from another slide ({info.get('source')}, "
                          f"content key {stored}; {name} has {key}); pass --overwrite to replace it with this "
                          "slide's labels, or write to another --out")


def _result(src, region, model, grid, *, store, sink, done, total, skipped, completed, seconds) -> SegmentResult:
    res = SegmentResult(
        labels=None, level=src.level, region=tuple(region), downsample=src.downsample,
        translate=(region[0] * src.downsample, region[1] * src.downsample),
        class_names=list(model.class_names), class_colors=[tuple(c) for c in model.class_colors],
        completed=completed, tiles_done=done, tiles_total=total, tiles_skipped=skipped, seconds=seconds,
        tile_shape=grid.tile_shape, overlap=grid.overlaps, computed_pixels=grid.computed_pixels)
    if store is not None:
        res.path = store.path
        res.labels = store.labels
        for name in ("probabilities", "uncertainty", "focus"):
            setattr(res, name, store.extra(name))
    else:
        res.labels = sink.labels
        for name, arr in sink.extras.items():
            setattr(res, name, arr)
    return res
