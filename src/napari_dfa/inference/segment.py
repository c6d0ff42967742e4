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
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .blend import TileBlender, MemorySink, TileOutput, ZarrSink
from .reader import LevelReader, _is_slide
from .tile_cache import TileCache, image_key
from .tiling import TileGrid
from .tissue import tissue_mask_for
from ..classes import ClassSet
from ..errors import ConfigError, DataError

logger = logging.getLogger(__name__)

OUTPUTS = ("labels", "probabilities", "uncertainty", "focus")
# Most neighbouring tiles of a row read as one box (see _Runner._plan_reads).
READ_RUN = 8
# Pixels per forward pass on GPUs when batch_size is not given: ~8 Mpx (the device stays busy while
# the host blends). On CPUs the default is one tile per pass on one torch thread, as many passes at
# once as torch had threads (see _tile_workers).
GPU_BATCH_PIXELS = 8 << 20
# Most forward passes run at once on a CPU: each holds one tile's activations (two 1056² passes at
# once grew the process by ~0.5 GB in the memory benchmark).
MAX_TILE_WORKERS = 8


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


def segment(slide_or_array, model, level=0, region=None, tile=None, overlap=None, device="auto", out=None,
            progress: Callable | None = None, cancel: Callable[[], bool] | None = None, resume=False,
            tissue_mask=True, outputs=("labels",), *, batch_size: int | None = None, chunk: int = 512,
            read_workers: int | None = None, channels_last: bool | None = None,
            threads: bool | None = None, tile_cache: TileCache | None = None,
            precision: str | None = None, tile_workers: int | None = None, stain=None) -> SegmentResult:
    """Segment a slide level (or a region of it) tile by tile.

    Arguments:
      slide_or_array: a :class:`~napari_dfa.slide.Slide`, a path to one, or a Y×X×3 uint8
        numpy/dask array.
      model: a :class:`~napari_dfa.model.Segmenter`, or a checkpoint path / ``"demo"``.
      level: pyramid level, or ``"auto"`` for the level closest to the model's microns per pixel.
      region: (y0, x0, height, width) in ``level`` pixels; None for the whole level.
      tile: forward-pass tile edge (a multiple of the model's ``input_multiple``); None (default):
        tiles near 1024 pixels fitted to the level (:func:`napari_dfa.inference.tiling.fit_axis`).
      overlap: pixels shared by neighbouring tiles (blended; None: 32); with ``tile=None`` the
        least overlap of the fitted lattice.
      device: "auto" | "cuda" | "mps" | "cpu" (the model is moved there).
      out: None for in-memory arrays, or a path for an OME-Zarr labels store.
      progress: ``progress(done, total, eta=seconds, skipped=n)`` after every batch.
      cancel: ``cancel() -> bool``; when it turns true the run stops after the current batch,
        keeps what was written and returns with ``completed=False``.
      resume: continue the store at ``out`` from the rows already written (same settings).
      tissue_mask: skip tiles over glass and give glass beside tissue label 0 (at the tissue
        mask's resolution); False: every pixel gets a class.
      outputs: any of "labels", "probabilities", "uncertainty", "focus".
      batch_size: tiles per forward pass. Default: on GPUs ~8 Mpx of tiles; on CPUs one tile per
        pass on one torch thread, as many passes at once as torch has threads (labels then do not
        depend on the thread count; restored after the call). Given on a CPU: that many tiles per
        pass, one pass at a time on torch's threads.
      chunk: chunk edge of the zarr store.
      read_workers: threads reading tiles ahead of the model when ``threads`` (default 2).
      channels_last: the model's memory format (None: channels-last on CPU and CUDA, where its
        convolutions run faster; the model keeps it after the call).
      threads: read and blend in threads beside the model (None: yes — except with an explicit
        ``batch_size`` on a CPU of at most 4 cores that torch all uses, where threads beside
        torch's would stall its parallel regions; the default one-thread passes have none).
      precision: the forward pass's arithmetic for this call (see
        :attr:`napari_dfa.model.Segmenter.precision`: ``"auto"``, ``"fp32"``, ``"bf16"``); None:
        the model's own (``"auto"``: bfloat16 on CUDA, float32 on CPUs).
      tile_workers: on a CPU without ``batch_size``, the one-thread passes run at once (None: as
        many as torch has threads). The labels do not depend on it.
      stain: match the slide's stain to the model's training stain before the model sees it:
        True (fitted on this level, :func:`napari_dfa.inference.stain.slide_stain_match`), or a
        :class:`~napari_dfa.model.stain.StainMatch` made once for the slide (views of it then share
        one); None/False: pixels as stored. The tissue mask reads the stored pixels either way.
      tile_cache: a :class:`~napari_dfa.inference.tile_cache.TileCache`: lattice tiles it holds for
        this image, level and model are not computed again, and computed ones are added (labels
        only; ignored for the other outputs). Panning a view then runs only the tiles it did not
        cover before.

    Returns:
      a :class:`SegmentResult`.
    """
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
        dev = resolve_device(device)
        model.to(dev)
        if precision is not None:
            model.precision = precision
        amp = model.autocast_dtype()
        arithmetic = "fp32" if amp is None else str(amp).removeprefix("torch.")
        if channels_last is None:
            channels_last = True if dev.type in ("cpu", "cuda") else None
        if channels_last is not None:
            model.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        multiple = int(getattr(model, "input_multiple", 32))
        grid = TileGrid(height=region[2], width=region[3], tile=None if tile is None else int(tile),
                        overlap=None if overlap is None else int(overlap), multiple=multiple,
                        origin=region[:2], extent=src.shape)
        k = len(model.class_names)
        extras = {n: (0 if n == "uncertainty" else k) for n in outputs if n != "labels"}
        settings = dict(level=src.level, region=list(region), tile=list(grid.tile_shape), overlap=list(grid.overlaps),
                        tissue_mask=bool(tissue_mask), model=model_fingerprint(model) if out is not None else None)
        if arithmetic != "fp32":  # stores written in float32 keep the settings they always had
            settings["precision"] = arithmetic
        if stain:  # likewise: absent when the stain is not matched
            settings["stain"] = stain.describe()

        store, start_row = None, 0
        if out is not None:
            store, start_row = _open_store(out, resume, src, region, model, extras, settings, chunk)
            if store.completed:
                logger.info("%s: already complete, nothing to resume", store.path)
                return _result(src, region, model, grid, store=store, sink=None, done=grid.total,
                               total=grid.total, skipped=0, completed=True, seconds=time.perf_counter() - t_start)
            sink = ZarrSink(store=store, start=start_row, extras=extras)
        else:
            sink = MemorySink(shape=(region[2], region[3]), extras=extras)
        skip = np.zeros((grid.rows, grid.cols), dtype=bool)
        glass = None
        if tissue_mask:
            by, bx, bh, bw = grid.box()
            tm = tissue_mask_for(src, region, box=(region[0] + by, region[1] + bx, bh, bw))
            for i in range(grid.rows):
                for j in range(grid.cols):
                    y, x, h, w = grid.tile_box(i, j)
                    skip[i, j] = not tm.any_in(y, x, h, w)
            # The glass (connected components, ~0.03 s on a 2048² level) is needed only when cells
            # are written: found beside the first reads and passes, not before them.
            tm.find_glass_in_background()
            glass = tm.glass_box
        blender = TileBlender(grid=grid, num_classes=k, outputs=set(outputs), sink=sink, glass=glass)
        first_row = grid.first_row_touching(start_row) if start_row else 0
        workers = _tile_workers(dev, batch_size, torch, tile_workers)
        threaded = _use_threads(threads, dev, torch, workers)
        cache = None
        if tile_cache is not None and not extras:
            cache = _CacheSlot(tile_cache, src, model, dev, channels_last, arithmetic, stain)
        run = _Runner(src=src, region=region, grid=grid, model=model, device=dev, blender=blender, skip=skip,
                      batch_size=1 if workers else (batch_size or _default_batch(grid)),
                      read_workers=(2 if read_workers is None else read_workers) if threaded else 0,
                      want_focus="focus" in outputs, dense=bool(extras), progress=progress, cancel=cancel,
                      cache=cache, forward_workers=workers or 1)
        try:
            with _cudnn_autotune(dev, torch), torch_threads(1 if workers else None):
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


def _default_batch(grid: TileGrid) -> int:
    """Tiles per pass on a GPU (CPUs run one tile per pass unless batch_size is given)."""
    return max(1, min(16, round(GPU_BATCH_PIXELS / (grid.tile_shape[0] * grid.tile_shape[1]))))


def _tile_workers(device, batch_size: int | None, torch, want: int | None = None) -> int:
    """Forward passes run at once on a CPU (0: not this mode — GPUs, or an explicit batch_size).

    Each pass is one tile on one torch thread, and ``want`` of them run side by side (default: as
    many as torch had threads; the widgets ask for one per core).
    One-thread arithmetic does not depend on the machine's core count, so a tile's labels are the
    same in the GUI (whose torch pool leaves a core to the UI), the CLI and on any other CPU of the same kind
    — with torch's threads inside one pass, reductions split by the thread count and near-ties
    flipped (10 pixels of the sample slide between 1 and 2 threads). It is no slower either: on 2
    cores one-thread passes side by side ran 2-10 % faster per pixel than two-tile passes on two
    threads (no synchronisation inside a pass, activations nearer one core's cache)."""
    if device.type != "cpu" or batch_size is not None:
        return 0
    return max(1, min(MAX_TILE_WORKERS, int(want) if want else torch.get_num_threads()))


def _argmax_channels(logits):
    """Index of the largest of the K channels of B×K×H×W logits (the first of tied maxima). On
    CPU, for contiguous (NCHW) logits, ``max(dim=1).indices`` is ~15x faster than ``argmax``."""
    return logits.max(dim=1).indices if logits.is_contiguous() else logits.argmax(dim=1)


class _cudnn_autotune:
    """cuDNN picks the fastest convolution for the (fixed) tile shape during the run; restored after."""

    def __init__(self, device, torch):
        self.on, self.torch, self.before = device.type == "cuda", torch, None

    def __enter__(self):
        if self.on:
            self.before = self.torch.backends.cudnn.benchmark
            self.torch.backends.cudnn.benchmark = True

    def __exit__(self, *exc):
        if self.on:
            self.torch.backends.cudnn.benchmark = self.before


def _auto_level(data, model) -> int:
    """The level nearest the model's µm/px (:func:`napari_dfa.slide.auto_level`); 0 for an array."""
    from ..slide.levels import auto_level

    return auto_level(data if _is_slide(data) else None, getattr(model, "mpp", None))


def _open_store(out, resume, src, region, model, extras, settings, chunk):
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
                               info=dict(settings, source=src.name, content_key=key,
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


def _use_threads(threads: bool | None, device, torch, workers: int = 0) -> bool:
    if threads is not None:
        return bool(threads)
    cores = os.cpu_count() or 1
    # One-thread passes (workers) have no parallel region that a reader thread could stall, and a
    # read done beside them keeps a pass from waiting for its tile (2048² level, 2 cores, with the
    # glass found beside the passes: median 0.70 -> 0.67 s over 16 interleaved runs).
    return device.type != "cpu" or workers > 0 or cores > 4 or cores > torch.get_num_threads()


class _CacheSlot:
    """A :class:`TileCache` bound to one run's image, level, model and device: keys of tiles."""

    def __init__(self, cache: TileCache, src: LevelReader, model, device, channels_last, arithmetic: str,
                 stain=None):
        self.cache = cache
        self.owner = src.slide if src.slide is not None else src.array
        self.base = (image_key(self.owner), src.level, model.fingerprint(), str(device), bool(channels_last),
                     arithmetic, stain.key if stain else None)

    def key(self, grid: TileGrid, region, i: int, j: int) -> tuple:
        return (*self.base, grid.tile_shape, int(region[0] + grid.ys.starts[i]),
                int(region[1] + grid.xs.starts[j]), tuple(grid.lattice_strips(i, j)))

    def get(self, key):
        return self.cache.get(key)

    def put(self, key, out: TileOutput) -> None:
        # Copies: the arrays are views of the whole batch's outputs, which must not stay alive.
        kept = TileOutput(labels=None if out.labels is None else np.array(out.labels),
                          bands=[(*box, np.array(arr)) for *box, arr in out.bands], window=out.window)
        self.cache.put(key, kept, owner=self.owner)


class _Inline:
    """An executor that runs each job at once in the calling thread."""

    def submit(self, fn, *args):
        future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever asks for the result
            future.set_exception(exc)
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass


class _Uploader:
    """Batches of tiles onto a CUDA device: staged in pinned (page-locked) host memory, copied on a
    side stream without blocking the host, the compute stream waiting only for its own batch.

    Two staging buffers take turns, so the host fills one while the other is still uploading; a
    buffer is refilled only after its last upload finished (an event)."""

    def __init__(self, device, batch_size: int, tile_shape: tuple[int, int], torch):
        self.torch, self.device = torch, device
        th, tw = tile_shape
        self.buffers = [torch.empty((batch_size, th, tw, 3), dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self.uploaded = [None, None]
        self.turn = 0
        self.stream = torch.cuda.Stream(device=device)

    def __call__(self, tiles: list[np.ndarray]):
        torch = self.torch
        k, self.turn = self.turn, 1 - self.turn
        if self.uploaded[k] is not None:
            self.uploaded[k].synchronize()
        n = len(tiles)
        np.stack(tiles, out=self.buffers[k].numpy()[:n])
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            x = self.buffers[k][:n].to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        compute.wait_event(done)
        x.record_stream(compute)  # allocated on the side stream, used on the compute stream
        self.uploaded[k] = done
        return x


class _Pending:
    """A batch's outputs on their way to the host: :meth:`resolve` waits for them (a CUDA event;
    nothing to wait for on CPU) and hands back one :class:`TileOutput` per tile."""

    def __init__(self, *, labels, parts, layout, windows, timing, runner):
        self.labels, self.parts, self.layout, self.windows = labels, parts, layout, windows
        self.timing, self.runner = timing, runner

    def resolve(self) -> list[TileOutput]:
        if self.timing is not None:  # CUDA: wait for the downloads, count the device time
            start, end = self.timing
            end.synchronize()
            self.runner.model_seconds += start.elapsed_time(end) / 1000.0
        labels = None if self.labels is None else self.labels.numpy()
        packed = not isinstance(self.parts, list)  # CUDA: one download, cut back into boxes
        index, offset, outs = 0, 0, []
        for b, (boxes, shapes) in enumerate(self.layout):
            arrays = []
            for shape in shapes:
                if packed:
                    size = int(np.prod(shape))
                    arrays.append(self.parts[offset : offset + size].numpy().reshape(shape))
                    offset += size
                else:
                    arrays.append(self.parts[index])
                    index += 1
            nb = len(boxes)
            outs.append(TileOutput(labels=None if labels is None else labels[b],
                                   bands=[(*box, arr) for box, arr in zip(boxes, arrays[:nb])],
                                   window=self.windows[b], focus=arrays[nb:] or None))
        return outs


class _Runner:
    """The tile loop: prefetching reads, batched forward passes, blending, progress and cancel."""

    def __init__(self, *, src: LevelReader, region, grid: TileGrid, model, device, blender: TileBlender,
                 skip: np.ndarray, batch_size: int, read_workers: int, want_focus: bool, dense: bool,
                 progress, cancel, cache: _CacheSlot | None = None, forward_workers: int = 1):
        self.src, self.region, self.grid, self.model = src, region, grid, model
        self.forward_workers = max(1, forward_workers)
        self._seconds_lock = threading.Lock()
        self.device, self.blender, self.skip = device, blender, skip
        self.batch_size, self.read_workers, self.want_focus = max(1, batch_size), max(0, read_workers), want_focus
        self.dense = dense or want_focus
        self.progress, self.cancel = progress, cancel
        self.cache = cache
        self.hits: dict[tuple[int, int], TileOutput] = {}
        self.done = 0
        self.peak_bytes = 0
        self.model_seconds = 0.0
        self._upload = None

    def _plan_reads(self, batches) -> None:
        """Group each row's computed tiles into runs of neighbours read as one box (a band).

        A tile read on its own decodes every stored tile under it, and neighbouring tiles share
        the stored tiles under their overlap (and those the tile grid does not align with), so
        tile-by-tile reads decode many stored tiles two or three times; one read of a run's box
        decodes each once and costs one dask compute instead of one per tile. Runs stop at skipped
        tiles (glass is never read) and after :data:`READ_RUN` tiles, and a band is dropped once
        its last tile has been taken."""
        self._run_of: dict[tuple[int, int], tuple[int, int]] = {}
        self._runs: dict[tuple[int, int], list] = {}  # key -> [lock, band or None, tiles left, js]
        self._runs_lock = threading.Lock()
        rows: dict[int, list[int]] = {}
        for i, js in batches:
            rows.setdefault(i, []).extend(js)
        for i, js in rows.items():
            run: list[int] = []
            for j in js + [None]:
                if run and (j is None or j != run[-1] + 1 or len(run) >= READ_RUN):
                    key = (i, run[0])
                    self._runs[key] = [threading.Lock(), None, len(run), run]
                    for jj in run:
                        self._run_of[(i, jj)] = key
                    run = []
                if j is not None:
                    run.append(j)

    def _read(self, i: int, j: int) -> np.ndarray:
        th, tw = self.grid.tile_shape
        key = self._run_of.get((i, j)) if hasattr(self, "_run_of") else None
        if key is None:
            y, x, h, w = self.grid.tile_box(i, j)
            return self.src.read_padded(self.region[0] + y, self.region[1] + x, h, w, th, tw)
        entry = self._runs[key]
        with entry[0]:  # one reader decodes the band; the run's other tiles wait for it
            if entry[1] is None:
                js = entry[3]
                y, x0, h, _ = self.grid.tile_box(i, js[0])
                _, xl, _, wl = self.grid.tile_box(i, js[-1])
                # The stored tiles under a band are decoded by dask's thread pool.
                entry[1] = (x0, self.src.read(self.region[0] + y, self.region[1] + x0, h, xl + wl - x0,
                                              threads=True))
            x0, band = entry[1]
            entry[2] -= 1
            if entry[2] == 0:
                with self._runs_lock:
                    del self._runs[key]
        _, x, h, w = self.grid.tile_box(i, j)
        tile = band[:, x - x0 : x - x0 + w]
        if (h, w) != (th, tw):
            return np.pad(tile, ((0, th - h), (0, tw - w), (0, 0)), mode="symmetric")
        return tile

    def run(self, first_row: int) -> bool:
        import torch

        grid = self.grid
        # Tiles of rows above the resume point count as done; they add nothing (their rows are final).
        for i in range(first_row):
            for j in range(grid.cols):
                self.blender.add_tile(i, j, None)
        self.done = first_row * grid.cols
        if self.cache is not None:
            for i in range(first_row, grid.rows):
                for j in range(grid.cols):
                    if not self.skip[i, j]:
                        hit = self.cache.get(self.cache.key(grid, self.region, i, j))
                        if hit is not None:
                            self.hits[(i, j)] = hit
        batches: list[tuple[int, list[int]]] = []
        for i in range(first_row, grid.rows):
            todo = [j for j in range(grid.cols) if not self.skip[i, j] and (i, j) not in self.hits]
            if not todo:
                batches.append((i, []))
            for b in range(0, len(todo), self.batch_size):
                batches.append((i, todo[b : b + self.batch_size]))
        last_batch_of_row = {i: pos for pos, (i, _) in enumerate(batches)}
        self._plan_reads(batches)
        if self.device.type == "cuda" and any(js for _, js in batches):
            self._upload = _Uploader(self.device, min(self.batch_size, grid.cols), grid.tile_shape, torch)
        t0, computed = time.perf_counter(), 0
        # Reading and blending run in threads beside the model (blending in batch order, at most two
        # batches behind, so the device gets its next batch while the last one is blended; numpy
        # frees the GIL) — or inline, when read_workers is 0.
        threaded = self.read_workers > 0
        pool = (ThreadPoolExecutor(max_workers=self.read_workers, thread_name_prefix="napari-dfa-read")
                if threaded else _Inline())
        blend_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-dfa-blend") if threaded else _Inline()
        # CPU: several one-thread forward passes at once (see segment._tile_workers).
        width = self.forward_workers
        forward_pool = (ThreadPoolExecutor(max_workers=width, thread_name_prefix="napari-dfa-forward")
                        if width > 1 else _Inline())
        queue: deque = deque()
        blending: deque = deque()
        running: deque = deque()  # (row, tile columns, forward future or None, row ends) in batch order
        flat = [(i, j) for i, js in batches for j in js]
        ahead = max(2 * self.batch_size * width, self.read_workers * 2) if threaded else 0
        pos = 0

        def report(row: int) -> None:
            if self.progress is not None:
                rate = computed / max(time.perf_counter() - t0, 1e-9)
                left = len(flat) - computed
                self.progress(self.done, grid.total, eta=left / rate if rate > 0 else None,
                              skipped=int(self.skip.sum()), row=row)

        def cancelled(row: int) -> bool:
            if self.cancel is None or not self.cancel():
                return False
            # Passes still running are dropped whole (nothing of them is written).
            while running:
                future = running.popleft()[2]
                if future is not None:
                    future.exception()
            while blending:
                blending.popleft().result()
            report(row)
            logger.info("segment cancelled after %d of %d tiles", self.done, grid.total)
            return True

        def finish_oldest() -> None:
            nonlocal computed
            i, js, future, row_end = running.popleft()
            out = future.result() if future is not None else None
            computed += len(js)
            while len(blending) >= 2:
                blending.popleft().result()
            blending.append(blend_pool.submit(self._blend, i, js, out, row_end))
            report(i)

        try:
            for row_pos, (i, js) in enumerate(batches):
                if cancelled(i):
                    return False
                while pos < len(flat) and len(queue) < ahead + len(js):
                    queue.append(pool.submit(self._read, *flat[pos]))
                    pos += 1
                tiles = [queue.popleft().result() for _ in js]
                future = forward_pool.submit(self._forward, i, js, tiles, torch) if tiles else None
                running.append((i, js, future, last_batch_of_row[i] == row_pos))
                # Asked during the forward pass: stop now (that batch is dropped, not half written).
                if future is not None and future.done() and cancelled(i):
                    return False
                while len(running) >= width:
                    finish_oldest()
            while running:
                if cancelled(running[0][0]):
                    return False
                finish_oldest()
            while blending:
                blending.popleft().result()
            report(grid.rows - 1)
            return True
        finally:
            for f in queue:
                f.cancel()
            forward_pool.shutdown(wait=True, cancel_futures=True)
            pool.shutdown(wait=True, cancel_futures=True)
            blend_pool.shutdown(wait=True)

    def _blend(self, i: int, js: list[int], out: _Pending | None, row_end: bool) -> None:
        """Add a batch's tiles (and, after the row's last batch, its glass tiles); write what is final."""
        if out is not None:
            for j, tile in zip(js, out.resolve()):
                self.blender.add_tile(i, j, tile)
                self.done += 1
                if self.cache is not None:
                    self.cache.put(self.cache.key(self.grid, self.region, i, j), tile)
            self.peak_bytes = max(self.peak_bytes, self.blender.in_flight_bytes)
        if row_end:
            for j in range(self.grid.cols):
                if self.skip[i, j] or (i, j) in self.hits:
                    self.blender.add_tile(i, j, self.hits.get((i, j)))
                    self.done += 1
        self.blender.sink.advance(self.blender.complete_rows())

    def _forward(self, i: int, js: list[int], tiles: list[np.ndarray], torch) -> _Pending:
        """One forward pass; the labels of each tile (argmax + 1, uint8) and the logits of the
        boxes to blend are cut on the model's device. On CUDA the downloads are queued and the call
        returns before the device finishes (the blending thread waits for them)."""
        grid = self.grid
        cuda = self.device.type == "cuda"
        t0 = time.perf_counter()
        timing = None
        with torch.inference_mode():
            if cuda:
                timing = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                timing[0].record()
            batch = self._upload(tiles) if self._upload is not None else np.stack(tiles)
            # The Segmenter autocasts as its precision says (bfloat16 on CUDA by default) and returns
            # float32 logits.
            res = self.model.predict_logits(batch, attention=self.want_focus)
            logits = res["logits"]
            if logits.shape[1] != len(self.model.class_names):
                raise DataError(f"the model returned {logits.shape[1]} channels for "
                                f"{len(self.model.class_names)} classes")
            focus = res.get("attention") if self.want_focus else None
            if focus is not None:
                focus = focus.float()
                if focus.shape[-2:] != logits.shape[-2:]:
                    focus = torch.nn.functional.interpolate(focus, size=logits.shape[-2:], mode="bilinear",
                                                            align_corners=False)
            labels = None
            if not self.dense:
                labels = _argmax_channels(logits).to(torch.uint8).add_(1)
            parts, layout, windows = [], [], []
            for b, j in enumerate(js):
                if self.dense:  # every kept pixel is blended (probabilities, uncertainty, focus)
                    ky0, _, _, ky1 = grid.ys.spans(i)
                    kx0, _, _, kx1 = grid.xs.spans(j)
                    boxes = [(ky0, ky1, kx0, kx1)]
                elif self.cache is not None:  # what any region needs of the tile, for the cache
                    boxes = grid.lattice_strips(i, j)
                else:
                    boxes = grid.shared_bands(i, j)
                tile_parts = [logits[b, :, y0:y1, x0:x1] for y0, y1, x0, x1 in boxes]
                if focus is not None:
                    tile_parts += [focus[b, :, y0:y1, x0:x1] for y0, y1, x0, x1 in boxes]
                parts += tile_parts
                layout.append((boxes, [tuple(p.shape) for p in tile_parts]))
                windows.append((grid.ys.window(i), grid.xs.window(j)))
            if cuda:
                labels, parts = self._download(labels, parts, torch)
                timing[1].record()
            else:
                labels = None if labels is None else labels.cpu()
                parts = [p.cpu().numpy() for p in parts]
        if not cuda:
            with self._seconds_lock:  # summed over the passes that ran at once
                self.model_seconds += time.perf_counter() - t0
        return _Pending(labels=labels, parts=parts, layout=layout, windows=windows, timing=timing, runner=self)

    @staticmethod
    def _download(labels, parts, torch):
        """Queue the copies to pinned host memory (one for the labels, one for every box packed)."""
        host_labels = None
        if labels is not None:
            host_labels = torch.empty(labels.shape, dtype=labels.dtype, pin_memory=True)
            host_labels.copy_(labels, non_blocking=True)
        if not parts:
            return host_labels, []
        packed = torch.cat([p.reshape(-1) for p in parts])
        host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
        host.copy_(packed, non_blocking=True)
        return host_labels, host
