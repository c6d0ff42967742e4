"""The torch views of a SAM-Path split that the trainer's DataLoaders read: augmented training
crops (:class:`TrainTiles`), the samplers that carry the epoch (and the crop size) with each index,
un-augmented evaluation pairs (:class:`EvalTiles`) and :func:`pad_collate`."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError
from .augment import augment, center_crop, rng_for
from .config import AugmentConfig


class TrainTiles(torch.utils.data.Dataset):
    """Augmented training crops; call :meth:`set_epoch` so augmentation follows (seed, epoch, index).

    Returns ``(image uint8 H×W×3 tensor, mask int64 H×W tensor)``.
    """

    def __init__(self, base, *, crop: int, augment_config: AugmentConfig, seed: int):
        self.base, self.crop, self.augment_config, self.seed = base, crop, augment_config, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.base)

    def __getitem__(self, key):
        # (epoch, index) keys come from EpochSampler: the epoch travels with the index, so
        # persistent DataLoader workers (which hold a copy of this object) augment correctly.
        # (epoch, index, crop, stream) keys come from MultiCropBatchSampler: the crop size of the
        # batch, and the stream (which size) so one tile's crops of two sizes are augmented apart.
        crop, stream = self.crop, 0
        if isinstance(key, tuple) and len(key) == 4:
            epoch, i, crop, stream = key
        else:
            epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        rgb, mask = self.base[i]
        index = i + stream * len(self.base)  # stream 0 (and a single crop) keeps the plain index
        rgb, mask = augment(rgb, mask, rng_for(self.seed, epoch, index), config=self.augment_config, crop=crop)
        return torch.from_numpy(rgb), torch.from_numpy(mask.astype(np.int64))


class MultiCropBatchSampler(torch.utils.data.Sampler):
    """Batches of several crop sizes (``[data] crops``): per epoch one pass per size over the tiles
    at least that large (smaller ones would be padded with glass-like white), shuffled from
    ``(seed, epoch, size)``, each rank taking every world-th tile as DistributedSampler does. The
    sizes' batches are interleaved evenly over the epoch, so a cosine schedule treats them alike.
    Yields lists of ``(epoch, index, crop, stream)`` keys for :class:`TrainTiles`.
    """

    def __init__(self, sides, *, crops, batch_sizes, seed: int, rank: int = 0, world_size: int = 1):
        self.crops, self.batch_sizes = list(crops), list(batch_sizes)
        self.seed, self.rank, self.world_size, self.epoch = seed, rank, world_size, 0
        self.eligible = [np.flatnonzero(np.asarray(sides) >= c) for c in self.crops]
        for c, idx in zip(self.crops, self.eligible):
            if not len(idx):
                raise DataError(f"[data] crops: no training tile is at least {c} px on its shorter side; "
                                f"use smaller crops (the largest tile side is {int(max(sides, default=0))} px)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _per_rank(self, k: int) -> int:
        return -(-len(self.eligible[k]) // self.world_size)

    def _batches(self, k: int) -> int:
        return -(-self._per_rank(k) // self.batch_sizes[k])

    def __len__(self):
        return sum(self._batches(k) for k in range(len(self.crops)))

    def __iter__(self):
        epoch, streams = self.epoch, []
        for k, (crop, idx) in enumerate(zip(self.crops, self.eligible)):
            g = torch.Generator()
            g.manual_seed(self.seed + 1000003 * epoch + 7919 * k)
            order = idx[torch.randperm(len(idx), generator=g).numpy()]
            n = self._per_rank(k) * self.world_size
            order = np.concatenate([order, order[: n - len(order)]])  # pad as DistributedSampler does
            mine = order[self.rank::self.world_size]
            b = self.batch_sizes[k]
            batches = [[(epoch, int(i), crop, k) for i in mine[j:j + b]] for j in range(0, len(mine), b)]
            streams += [((j + 0.5) / len(batches), k, batch) for j, batch in enumerate(batches)]
        streams.sort(key=lambda t: (t[0], t[1]))
        return (batch for _, _, batch in streams)


class EpochSampler(torch.utils.data.Sampler):
    """Wraps a sampler with ``set_epoch`` (e.g. DistributedSampler) and yields ``(epoch, index)``."""

    def __init__(self, sampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, int(i)) for i in self.sampler)

    def __len__(self):
        return len(self.sampler)


class EvalTiles(torch.utils.data.Dataset):
    """Un-augmented pairs for validation/testing: full images, or a centre crop of ``crop``."""

    def __init__(self, base, *, crop: int = 0):
        self.base, self.crop = base, crop

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        rgb, mask = self.base[i]
        if self.crop:
            rgb, mask = center_crop(rgb, mask, self.crop)
        return torch.from_numpy(np.ascontiguousarray(rgb)), torch.from_numpy(mask.astype(np.int64))


def pad_collate(batch, multiple: int = 32):
    """Stack pairs of different sizes: pad to the batch's largest size rounded up to ``multiple``
    (image with white, mask with the ignore label, so padding never enters loss or metrics)."""
    h = max(img.shape[0] for img, _ in batch)
    w = max(img.shape[1] for img, _ in batch)
    h, w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    imgs = torch.full((len(batch), h, w, 3), 255, dtype=torch.uint8)
    masks = torch.zeros((len(batch), h, w), dtype=torch.int64)
    for j, (img, mask) in enumerate(batch):
        imgs[j, : img.shape[0], : img.shape[1]] = img
        masks[j, : mask.shape[0], : mask.shape[1]] = mask
    return imgs, masks
