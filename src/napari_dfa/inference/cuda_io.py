"""Tiles to and from a CUDA device without stalling the host (no Qt).

Tiles go up through pinned (page-locked) host memory on a side stream (:class:`Uploader`), results
come back into pinned memory without blocking (:func:`download`), so that reading and blending on
the host overlap the device's work; :class:`cudnn_autotune` lets cuDNN pick its convolutions for
the run's fixed tile shape. ``torch`` is passed in: importing this module does not import it.
"""

from __future__ import annotations

import numpy as np


class cudnn_autotune:
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


class Uploader:
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


def download(labels, parts, torch):
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
