"""Whole-slide inference: tiled, seamless, bounded memory, cancellable and resumable (no Qt).

:func:`segment` runs a :class:`~napari_dfa.model.Segmenter` over a region (or the whole level) of
a slide or an image:

1. a tile grid with overlap (:mod:`._tiling`); tiles over glass are skipped using a tissue mask
   from a coarse level (:mod:`._tissue`) and get label 0, and so does the glass in tiles at
   the edge of the tissue (at the mask's resolution);
2. tiles are read by a thread pool a few tiles ahead of the model, batched within a tile row,
   run under ``torch.inference_mode`` (autocast to float16 on CUDA);
3. **logits** are blended with a raised-cosine window (:mod:`._blend`). Logits rather than
   softmax probabilities: a weighted mean of logits is the log-linear pool of the tiles'
   predictions, costs no softmax per tile, and the argmax needs no normalisation; probabilities,
   when asked for, are the softmax of the blended logits;
4. finished cells become uint8 labels at once, and whole chunk rows are written to the OME-Zarr
   store by a writer thread (:mod:`._zarr_out`), which records the rows done after each write.
   Float accumulators exist only for the cells under tiles in flight (the overlap strip of one
   tile row), so memory does not grow with the slide's height, and only by the strip with its width.

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

from .blend import CellBlender, MemorySink, ZarrSink
from .reader import Source, _is_slide
from .tiling import TileGrid
from .tissue import tissue_mask_for
from ..labels.store import LabelsStore
from ..errors import ConfigError, DataError

logger = logging.getLogger(__name__)

OUTPUTS = ("labels", "probabilities", "uncertainty", "focus")
# Most neighbouring tiles of a row read as one box (see _Runner._plan_reads).
READ_RUN = 8


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
    model_seconds: float = 0.0  # wall time inside forward passes (+ transfer back): the rest is overhead


def model_fingerprint(model) -> str:
    """The identity of a model's weights and classes (resume refuses a different model); see
    :meth:`napari_dfa.model.Segmenter.fingerprint`."""
    return model.fingerprint()


def segment(slide_or_array, model, level=0, region=None, tile=512, overlap=64, device="auto", out=None,
            progress: Callable | None = None, cancel: Callable[[], bool] | None = None, resume=False,
            tissue_mask=True, outputs=("labels",), *, batch_size: int | None = None, chunk: int = 512,
            read_workers: int = 2, channels_last: bool | None = None,
            threads: bool | None = None) -> SegmentResult:
    """Segment a slide level (or a region of it) tile by tile.

    Arguments:
      slide_or_array: a :class:`~napari_dfa.slide.Slide`, a path to one, or a Y×X×3 uint8
        numpy/dask array.
      model: a :class:`~napari_dfa.model.Segmenter`, or a checkpoint path / ``"demo"``.
      level: pyramid level, or ``"auto"`` for the level closest to the model's microns per pixel.
      region: (y0, x0, height, width) in ``level`` pixels; None for the whole level.
      tile: forward-pass tile edge (a multiple of the model's ``input_multiple``).
      overlap: pixels shared by neighbouring tiles (blended); at least the model's context helps.
      device: "auto" | "cuda" | "mps" | "cpu" (the model is moved there).
      out: None for in-memory arrays, or a path for an OME-Zarr labels store.
      progress: ``progress(done, total, eta=seconds, skipped=n)`` after every batch.
      cancel: ``cancel() -> bool``; when it turns true the run stops after the current batch,
        keeps what was written and returns with ``completed=False``.
      resume: continue the store at ``out`` from the rows already written (same settings).
      tissue_mask: skip tiles over glass and give glass beside tissue label 0 (at the tissue
        mask's resolution); False: every pixel gets a class.
      outputs: any of "labels", "probabilities", "uncertainty", "focus".
      batch_size: tiles per forward pass (default 8 on GPUs, 2 on CPU).
      chunk: chunk edge of the zarr store.
      read_workers: threads reading tiles ahead of the model.
      channels_last: convert the model to channels-last memory format (None: leave it as it is).
      threads: read and blend in threads beside the model (None: yes on GPUs and on CPUs with more
        than 4 cores; on a small CPU, threads beside torch's own stall its parallel regions).

    Returns:
      a :class:`SegmentResult`.
    """
    import torch

    from ..model import load_model
    from ..model.device import resolve_device

    t_start = time.perf_counter()
    opened = None
    if isinstance(slide_or_array, (str, Path)):
        from ..slide import open_slide

        slide_or_array = opened = open_slide(slide_or_array)
    if isinstance(model, (str, Path)):
        model = load_model(model)
    try:
        unknown = set(outputs) - set(OUTPUTS)
        if unknown:
            raise ConfigError(f"unknown outputs {sorted(unknown)}; choose from {', '.join(OUTPUTS)}")
        if level == "auto":
            level = _auto_level(slide_or_array, model)
        src = Source(data=slide_or_array, level=level)
        region = src.check_region(region)
        dev = resolve_device(device)
        model.to(dev)
        if channels_last is not None:
            model.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        multiple = int(getattr(model, "input_multiple", 32))
        grid = TileGrid(height=region[2], width=region[3], tile=int(tile), overlap=int(overlap), multiple=multiple)
        k = len(model.class_names)
        extras = {n: (0 if n == "uncertainty" else k) for n in outputs if n != "labels"}
        settings = dict(level=src.level, region=list(region), tile=int(tile), overlap=int(overlap),
                        tissue_mask=bool(tissue_mask), model=model_fingerprint(model) if out is not None else None)

        store, start_row = None, 0
        if out is not None:
            store, start_row = _open_store(out, resume, src, region, model, extras, settings, chunk)
            if store.completed:
                logger.info("%s: already complete, nothing to resume", store.path)
                return _result(src, region, model, store=store, sink=None, done=grid.total, total=grid.total,
                               skipped=0, completed=True, seconds=time.perf_counter() - t_start)
            sink = ZarrSink(store=store, start=start_row, extras=extras)
        else:
            sink = MemorySink(shape=(region[2], region[3]), extras=extras)
        skip = np.zeros((grid.rows, grid.cols), dtype=bool)
        glass = None
        if tissue_mask:
            tm = tissue_mask_for(src, region)
            for i in range(grid.rows):
                for j in range(grid.cols):
                    y, x, h, w = grid.tile_box(i, j)
                    skip[i, j] = not tm.any_in(y, x, h, w)
            if tm.glass.any():
                glass = tm.glass_box
        blender = CellBlender(grid=grid, num_classes=k, outputs=set(outputs), sink=sink, glass=glass)
        first_row = grid.first_row_touching(start_row) if start_row else 0
        run = _Runner(src=src, region=region, grid=grid, model=model, device=dev, blender=blender, skip=skip,
                      batch_size=batch_size or (8 if dev.type != "cpu" else 2),
                      read_workers=read_workers if _use_threads(threads, dev) else 0,
                      want_focus="focus" in outputs, progress=progress, cancel=cancel)
        try:
            completed = run.run(first_row)
        finally:
            sink.close()
        if store is not None and completed:
            store.finish()
        logger.info("segment: %d tiles (%d skipped as glass) in %.1f s", run.done, int(skip.sum()),
                    time.perf_counter() - t_start)
        res = _result(src, region, model, store=store, sink=sink, done=run.done, total=grid.total,
                      skipped=int(skip.sum()), completed=completed, seconds=time.perf_counter() - t_start)
        res.peak_float_bytes = run.peak_bytes
        res.model_seconds = run.model_seconds
        return res
    finally:
        if opened is not None:
            opened.close()


def _auto_level(data, model) -> int:
    mpp = getattr(model, "mpp", None)
    if not _is_slide(data) or mpp is None or getattr(data, "mpp", None) is None:
        logger.info("level='auto': no microns per pixel known for the model or the image; using level 0")
        return 0
    return int(data.best_level_for_mpp(mpp))


def _open_store(out, resume, src, region, model, extras, settings, chunk):
    path = Path(out)
    if resume and path.exists():
        store = LabelsStore.open(path)
        info = store.info
        stored = {key: info.get(key) for key in settings}
        if stored != settings or sorted(info.get("extras", [])) != sorted(extras):
            raise ConfigError(f"{path}: cannot resume, the store was written with other settings "
                              f"({stored}, outputs {info.get('extras')}); rerun without --resume to start over")
        logger.info("%s: resuming after %d of %d rows", path, store.rows_done, region[2])
        return store, store.rows_done
    translate = (region[0] * src.downsample, region[1] * src.downsample)
    store = LabelsStore.create(path, shape=(region[2], region[3]), class_names=model.class_names,
                               class_colors=model.class_colors, chunk=chunk, downsample=src.downsample,
                               translate=translate, extras=extras,
                               info=dict(settings, source=src.name,
                                         mpp=getattr(src.slide, "mpp", None),
                                         # the label levels then match the slide's (NGFF labels)
                                         image_downsamples=getattr(src.slide, "downsamples", None)))
    return store, 0


def _result(src, region, model, *, store, sink, done, total, skipped, completed, seconds) -> SegmentResult:
    res = SegmentResult(
        labels=None, level=src.level, region=tuple(region), downsample=src.downsample,
        translate=(region[0] * src.downsample, region[1] * src.downsample),
        class_names=list(model.class_names), class_colors=[tuple(c) for c in model.class_colors],
        completed=completed, tiles_done=done, tiles_total=total, tiles_skipped=skipped, seconds=seconds)
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


def _use_threads(threads: bool | None, device) -> bool:
    if threads is not None:
        return bool(threads)
    return device.type != "cpu" or (os.cpu_count() or 1) > 4


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


class _Runner:
    """The tile loop: prefetching reads, batched forward passes, blending, progress and cancel."""

    def __init__(self, *, src: Source, region, grid: TileGrid, model, device, blender: CellBlender,
                 skip: np.ndarray, batch_size: int, read_workers: int, want_focus: bool,
                 progress, cancel):
        self.src, self.region, self.grid, self.model = src, region, grid, model
        self.device, self.blender, self.skip = device, blender, skip
        self.batch_size, self.read_workers, self.want_focus = max(1, batch_size), max(0, read_workers), want_focus
        self.progress, self.cancel = progress, cancel
        self.done = 0
        self.peak_bytes = 0
        self.model_seconds = 0.0

    def _plan_reads(self, batches) -> None:
        """Group each row's computed tiles into runs of neighbours read as one box (a band).

        A tile read on its own decodes every stored tile under it, and neighbouring tiles share
        the stored tiles under their overlap (and those the tile grid does not align with), so
        tile-by-tile reads decode many stored tiles two or three times; one read of a run's box
        decodes each once and costs one dask compute instead of one per tile. Runs stop at skipped
        tiles (glass is never read) and after :data:`READ_RUN` tiles (a band of 8 tiles of 512²
        is ~6 MB), and a band is dropped once its last tile has been taken."""
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
                entry[1] = (x0, self.src.read(self.region[0] + y, self.region[1] + x0, h, xl + wl - x0))
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
                self.blender.add_tile(i, j, None, None)
        self.done = first_row * grid.cols
        batches: list[tuple[int, list[int]]] = []
        for i in range(first_row, grid.rows):
            todo = [j for j in range(grid.cols) if not self.skip[i, j]]
            if not todo:
                batches.append((i, []))
            for b in range(0, len(todo), self.batch_size):
                batches.append((i, todo[b : b + self.batch_size]))
        last_batch_of_row = {i: pos for pos, (i, _) in enumerate(batches)}
        self._plan_reads(batches)
        t0, computed = time.perf_counter(), 0
        # Reading and blending run in threads beside the model (blending in batch order, at most two
        # batches behind, so the device gets its next batch while the last one is blended; numpy
        # frees the GIL) — or inline, when read_workers is 0.
        threaded = self.read_workers > 0
        pool = (ThreadPoolExecutor(max_workers=self.read_workers, thread_name_prefix="napari-dfa-read")
                if threaded else _Inline())
        blend_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-dfa-blend") if threaded else _Inline()
        queue: deque = deque()
        blending: deque = deque()
        flat = [(i, j) for i, js in batches for j in js]
        ahead = max(2 * self.batch_size, self.read_workers * 2) if threaded else 0
        pos = 0

        def report(row: int) -> None:
            if self.progress is not None:
                rate = computed / max(time.perf_counter() - t0, 1e-9)
                left = len(flat) - computed
                self.progress(self.done, grid.total, eta=left / rate if rate > 0 else None,
                              skipped=int(self.skip.sum()), row=row)

        try:
            for row_pos, (i, js) in enumerate(batches):
                if self.cancel is not None and self.cancel():
                    while blending:
                        blending.popleft().result()
                    report(i)
                    logger.info("segment cancelled after %d of %d tiles", self.done, grid.total)
                    return False
                while pos < len(flat) and len(queue) < ahead + len(js):
                    queue.append(pool.submit(self._read, *flat[pos]))
                    pos += 1
                tiles = [queue.popleft().result() for _ in js]
                out = self._forward(i, js, tiles, torch) if tiles else None
                computed += len(js)
                while len(blending) >= 2:
                    blending.popleft().result()
                blending.append(blend_pool.submit(self._blend, i, js, out, last_batch_of_row[i] == row_pos))
                report(i)
            while blending:
                blending.popleft().result()
            report(grid.rows - 1)
            return True
        finally:
            for f in queue:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            blend_pool.shutdown(wait=True)

    def _blend(self, i: int, js: list[int], out, row_end: bool) -> None:
        """Add a batch's tiles (and, after the row's last batch, its glass tiles); write what is final."""
        if out is not None:
            weighted, windows, focus = out
            for b, j in enumerate(js):
                self.blender.add_tile(i, j, weighted[b], windows[b], None if focus is None else focus[b])
                self.done += 1
            self.peak_bytes = max(self.peak_bytes, self.blender.in_flight_bytes)
        if row_end:
            for j in range(self.grid.cols):
                if self.skip[i, j]:
                    self.blender.add_tile(i, j, None, None)
                    self.done += 1
        self.blender.sink.advance(self.blender.complete_rows())

    def _forward(self, i: int, js: list[int], tiles: list[np.ndarray], torch):
        batch = np.stack(tiles)
        windows = np.stack([self.grid.window(i, j) for j in js])
        t0 = time.perf_counter()
        with torch.inference_mode():
            # The Segmenter autocasts on CUDA (bfloat16/float16) and returns float32 logits.
            res = self.model.predict_logits(batch, attention=self.want_focus)
            w = torch.from_numpy(windows).to(self.device)[:, None]
            logits = res["logits"]
            if logits.shape[1] != len(self.model.class_names):
                raise DataError(f"the model returned {logits.shape[1]} channels for "
                                f"{len(self.model.class_names)} classes")
            weighted = (logits.float() * w).cpu().numpy()
            focus = None
            if self.want_focus and res.get("attention") is not None:
                att = res["attention"].float()
                if att.shape[-2:] != logits.shape[-2:]:
                    att = torch.nn.functional.interpolate(att, size=logits.shape[-2:], mode="bilinear",
                                                          align_corners=False)
                focus = (att * w).cpu().numpy()
        self.model_seconds += time.perf_counter() - t0  # .cpu() above waited for the device
        return weighted, windows, focus
