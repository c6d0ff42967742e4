"""The tile loop of :func:`napari_dfa.inference.segment` (no Qt): tiles read a few ahead of the
model, batched forward passes, blending and writing in batch order, progress and cancel.

Reading and blending run in threads beside the model where a core is free (on GPUs, and on CPUs
that have more cores than torch uses), else between forward passes; on a CPU without a batch size
one-tile passes on one torch thread run side by side (:func:`cpu_tile_workers`). Reads come band
by band (:mod:`.bands`), CUDA transfers through :mod:`.cuda_io`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .bands import BandReader
from .blend import TileBlender, TileOutput
from .cuda_io import Uploader, download
from .reader import LevelReader
from .tile_cache import TileCache, image_key
from .tiling import TileGrid
from ..errors import DataError

logger = logging.getLogger(__name__)

# Pixels per forward pass on GPUs when batch_size is not given: ~8 Mpx (the device stays busy while
# the host blends). On CPUs the default is one tile per pass on one torch thread, as many passes at
# once as torch had threads (see cpu_tile_workers).
GPU_BATCH_PIXELS = 8 << 20
# Most forward passes run at once on a CPU: each holds one tile's activations (what two at once
# cost: BENCHMARKS.md, "CPU passes", issue 11).
MAX_TILE_WORKERS = 8


def default_batch(grid: TileGrid) -> int:
    """Tiles per pass on a GPU (CPUs run one tile per pass unless batch_size is given)."""
    return max(1, min(16, round(GPU_BATCH_PIXELS / (grid.tile_shape[0] * grid.tile_shape[1]))))


def cpu_tile_workers(device, batch_size: int | None, torch, want: int | None = None) -> int:
    """Forward passes run at once on a CPU (0: not this mode — GPUs, or an explicit batch_size).

    Each pass is one tile on one torch thread, and ``want`` of them run side by side (default: as
    many as torch had threads; the widgets ask for one per core).
    One-thread arithmetic does not depend on the machine's core count, so a tile's labels are the
    same in the GUI (whose torch pool leaves a core to the UI), the CLI and on any other CPU of the same kind
    — with torch's threads inside one pass, reductions split by the thread count and near-ties
    flipped. It is no slower either (no synchronisation inside a pass, activations nearer one
    core's cache); the figures are in BENCHMARKS.md ("CPU passes", issue 11)."""
    if device.type != "cpu" or batch_size is not None:
        return 0
    return max(1, min(MAX_TILE_WORKERS, int(want) if want else torch.get_num_threads()))


def _argmax_channels(logits):
    """Index of the largest of the K channels of B×K×H×W logits (the first of tied maxima). On
    CPU, for contiguous (NCHW) logits, ``max(dim=1).indices`` is ~15x faster than ``argmax``."""
    return logits.max(dim=1).indices if logits.is_contiguous() else logits.argmax(dim=1)


def use_threads(threads: bool | None, device, torch, workers: int = 0) -> bool:
    """Read and blend in threads beside the model (see ``threads`` of :func:`.segment.segment`)."""
    if threads is not None:
        return bool(threads)
    cores = os.cpu_count() or 1
    # One-thread passes (workers) have no parallel region that a reader thread could stall, and a
    # read done beside them keeps a pass from waiting for its tile (BENCHMARKS.md, issue 11 fourth
    # round: "Reads beside the passes").
    return device.type != "cpu" or workers > 0 or cores > 4 or cores > torch.get_num_threads()


class CacheSlot:
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


class TileRunner:
    """The tile loop: prefetching reads, batched forward passes, blending, progress and cancel."""

    def __init__(self, *, src: LevelReader, region, grid: TileGrid, model, device, blender: TileBlender,
                 skip: np.ndarray, batch_size: int, read_workers: int, want_focus: bool, dense: bool,
                 progress, cancel, cache: CacheSlot | None = None, forward_workers: int = 1):
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
        self.reads = BandReader(src, region, grid)

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
        self.reads.plan(batches)
        if self.device.type == "cuda" and any(js for _, js in batches):
            self._upload = Uploader(self.device, min(self.batch_size, grid.cols), grid.tile_shape, torch)
        t0, computed = time.perf_counter(), 0
        # Reading and blending run in threads beside the model (blending in batch order, at most two
        # batches behind, so the device gets its next batch while the last one is blended; numpy
        # frees the GIL) — or inline, when read_workers is 0.
        threaded = self.read_workers > 0
        pool = (ThreadPoolExecutor(max_workers=self.read_workers, thread_name_prefix="napari-dfa-read")
                if threaded else _Inline())
        blend_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-dfa-blend") if threaded else _Inline()
        # CPU: several one-thread forward passes at once (see cpu_tile_workers).
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
                    queue.append(pool.submit(self.reads.read, *flat[pos]))
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
                labels, parts = download(labels, parts, torch)
                timing[1].record()
            else:
                labels = None if labels is None else labels.cpu()
                parts = [p.cpu().numpy() for p in parts]
        if not cuda:
            with self._seconds_lock:  # summed over the passes that ran at once
                self.model_seconds += time.perf_counter() - t0
        return _Pending(labels=labels, parts=parts, layout=layout, windows=windows, timing=timing, runner=self)

