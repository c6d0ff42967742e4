"""Writers of synthetic data: a dataset in the SAM-Path layout and a pyramidal slide with its truth.

Dataset layout (as SAM-Path reads it: ``dataset_root/img``, ``dataset_root/mask``, ``cv.csv``)::

    root/img/<id>.png     RGB tiles
    root/mask/<id>.png    uint8 labels, 0 = ignore / outside the ROI, 1..K classes
    root/cv.csv           img_id,fold   (-1 test, 0 validation, >= 1 train folds 1..4)
    root/synth.json       class names, colours, configured and measured frequencies, the config

Slide: an Aperio-style tiled TIFF (page 0 = level 0 with an ``Aperio Image Library ... |MPP = 0.5``
description, page 1 = stripped thumbnail, pages 2.. = reduced levels, as SVS files are laid out and
both tifffile and OpenSlide read them), and ``<stem>_truth.tif``: uint8 labels as a tiled pyramid of
SubIFDs with lossless deflate. Level 0 is rendered window by window; lower RGB levels are built from
scratch files written and read back band by band, so the whole RGB image is never held in memory.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from .. import __version__
from .config import GLASS, SynthConfig
from .layout import class_layout, tissue_region, upsample_labels
from .render import margin_for, pixel_noise, render, sample_stain
from ..errors import Cancelled, ConfigError, DataError
from ..files.outputs import temp_twin
from .tiles import (
    DATASET_CSV,
    DATASET_JSON,
    balance_proportions,
    generate_tile,
    label_frequencies,
    tile_proportions,
)

logger = logging.getLogger(__name__)

_LAYOUT_CELLS = 1024  # a slide's layout is drawn on a grid of at most about this many cells a side
_TRAIN_FOLDS = 4


def _check_cancel(cancel, what: str) -> None:
    if cancel is not None and cancel():
        raise Cancelled(f"{what}: cancelled; files written so far are kept")


def write_dataset(root, config: SynthConfig, n_train: int, n_val: int, n_test: int, *, tile: int = 256,
                  seed: int = 0, progress=None, cancel=None) -> Path:
    """Write ``n_train + n_val + n_test`` tiles in the SAM-Path layout into ``root``; returns ``root``.

    Per split, the per-tile class mixes are drawn around the configured frequencies and then
    balanced so that the split as a whole has the configured frequencies. ``progress(done, total)``
    is called after each tile; ``cancel()`` returning True stops with :class:`Cancelled`.
    """
    root = Path(root)
    counts_in = (n_train, n_val, n_test)
    if min(counts_in) < 0 or sum(counts_in) == 0:
        raise ConfigError(f"{root}: need a non-negative number of tiles per split and at least one, got {counts_in}")
    if tile < 32:
        raise ConfigError(f"{root}: tile size {tile} is too small (use at least 32)")
    try:
        (root / "img").mkdir(parents=True, exist_ok=True)
        (root / "mask").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{root}: cannot create the dataset folders ({exc})") from None

    k = config.num_classes
    splits = [("train", n_train), ("val", n_val), ("test", n_test)]
    total = sum(counts_in)
    rows: list[tuple[str, int]] = []
    counts = {name: np.zeros(k + 1, np.int64) for name, _ in splits}
    done = 0
    for split_index, (split, n) in enumerate(splits):
        if n == 0:
            continue
        rng = np.random.default_rng([seed, split_index, 0xDA7A])
        mixes = balance_proportions(tile_proportions(config, rng, n), config.frequencies)
        for i in range(n):
            _check_cancel(cancel, str(root))
            img_id = f"synth_{split}_{i:05d}"
            rgb, mask = generate_tile(config, (seed, split_index, i), size=tile, proportions=mixes[i])
            Image.fromarray(rgb).save(root / "img" / f"{img_id}.png", compress_level=1)
            Image.fromarray(mask).save(root / "mask" / f"{img_id}.png", compress_level=1)
            counts[split] += np.bincount(mask.ravel(), minlength=k + 1)[: k + 1]
            fold = -1 if split == "test" else 0 if split == "val" else 1 + i % _TRAIN_FOLDS
            rows.append((img_id, fold))
            done += 1
            if progress is not None:
                progress(done, total)

    all_counts = sum(counts.values())
    info = {
        "generator": f"napari-dfa {__version__} synth",
        "seed": seed,
        "tile": tile,
        "mpp": config.mpp,
        "splits": {name: n for name, n in splits},
        "csv": DATASET_CSV,
        "folds": {"test": -1, "validation": 0, "train": list(range(1, _TRAIN_FOLDS + 1))},
        "ignore_fraction_measured": float(all_counts[0] / max(all_counts.sum(), 1)),
        "classes": [
            {
                "id": i + 1,
                "name": c.name,
                "color": list(config.class_colors[i]),
                "frequency": c.frequency,
                "difficulty": c.difficulty,
                "lookalike": c.lookalike,
                "measured_frequency": {
                    name: float(label_frequencies(cnt)[i]) for name, cnt in [("all", all_counts), *counts.items()]
                },
            }
            for i, c in enumerate(config.classes)
        ],
        "config": config.to_dict(),
    }
    (root / DATASET_JSON).write_text(json.dumps(info, indent=2), encoding="utf-8")
    # The CSV last: its presence means every tile it lists is on disk.
    tmp = root / f".{DATASET_CSV}.tmp"
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["img_id", "fold"])
        writer.writerows(rows)
    os.replace(tmp, root / DATASET_CSV)
    logger.info("wrote %d synthetic tiles to %s (measured frequencies %s)", total, root,
                np.round(label_frequencies(all_counts), 3).tolist())
    return root


def truth_path_for(slide_path) -> Path:
    """Where :func:`write_slide` puts the truth labels of ``slide_path``: ``<stem>_truth.tif``."""
    p = Path(slide_path)
    return p.with_name(f"{p.stem}_truth.tif")


class _SlidePlan:
    """The deterministic recipe of one slide: low-resolution layout, stain and render settings."""

    def __init__(self, config: SynthConfig, size: tuple[int, int], seed: int):
        self.config, self.size, self.seed = config, size, (int(seed),)
        h, w = size
        # Layout at 1/8 resolution, coarser for huge slides so its memory stays bounded (~100 MB).
        self.factor = max(8, 2 ** math.ceil(math.log2(max(h, w) / _LAYOUT_CELLS)))
        low_shape = (math.ceil(h / self.factor) + 2, math.ceil(w / self.factor) + 2)
        tissue = tissue_region(low_shape, fraction=config.tissue_fraction, seed=self.seed)
        low = class_layout(low_shape, proportions=np.asarray(config.frequencies),
                           region_size=config.slide_region_size / self.factor, seed=self.seed, valid=tissue)
        low[~tissue] = 0
        self.low = low
        self.appearances = config.effective_appearances()
        self.sigmas = config.blur_sigmas()
        self.margin = margin_for(self.appearances, self.sigmas)
        self.stain = sample_stain(np.random.default_rng([*self.seed, 0x5A1D]), config.stain_jitter)

    def labels(self, y0: int, x0: int, h: int, w: int, step: int = 1) -> np.ndarray:
        """Truth of the window; with ``step``, every ``step``-th level-0 pixel from (y0, x0)."""
        return upsample_labels(self.low, self.factor, y0, x0, h, w, self.seed, step=step)

    def rgb(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        m = self.margin
        window = self.labels(y0 - m, x0 - m, h + 2 * m, w + 2 * m)
        if not window.any():  # all glass: skip the texture work
            return _glass(self.stain, h, w, self.seed, y0, x0)
        return render(window, y0=y0, x0=x0, margin=m, appearances=self.appearances, sigmas=self.sigmas,
                      stain=self.stain, seed=self.seed, fibre_period=self.config.fibre_period)


def _glass(stain, h, w, seed, y0, x0) -> np.ndarray:
    """Empty glass: the render of label 0 without the texture work (same noise, same colour)."""
    glass = GLASS
    od = glass.haem * stain.h_scale * stain.h_vec + glass.eosin * stain.e_scale * stain.e_vec + stain.background
    od = od.astype(np.float32) * (1 + glass.grain * pixel_noise(seed, y0, x0, h, w))[..., None]
    return np.clip(255.0 * np.exp(-od) + 0.5, 0, 255).astype(np.uint8)


def _level_shapes(h: int, w: int, tile: int) -> list[tuple[int, int]]:
    shapes = [(h, w)]
    while max(shapes[-1]) > 2 * tile:
        ph, pw = shapes[-1]
        shapes.append((max(1, ph // 2), max(1, pw // 2)))
    return shapes


def _downsample2(block: np.ndarray) -> np.ndarray:
    """2×2 mean (rounded), cropping an odd edge row/column."""
    h, w = block.shape[0] // 2 * 2, block.shape[1] // 2 * 2
    b = block[:h, :w].astype(np.uint16)
    return ((b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2] + 2) // 4).astype(np.uint8)


def write_slide(path, config: SynthConfig, *, size=(8192, 8192), seed: int = 0, mpp: float | None = None,
                tile: int = 256, compression: str = "jpeg", quality: int = 85, progress=None,
                cancel=None) -> tuple[Path, Path]:
    """Write a synthetic pyramidal slide and its truth labels; returns (slide path, truth path).

    Arguments:
      path: output ``.tif``/``.svs`` file; the truth goes to ``<stem>_truth.tif`` beside it.
      config: generator settings (``config.mpp`` unless ``mpp`` is given).
      size: (height, width) of level 0 in pixels.
      seed: the same seed gives the same slide.
      mpp: microns per level-0 pixel recorded in the file.
      tile: TIFF tile edge (a multiple of 16).
      compression: ``"jpeg"`` (small, lossy) or ``"deflate"`` (lossless) for the RGB pyramid.
      quality: JPEG quality.
      progress: ``progress(done, total)`` per rendered row of tiles.
      cancel: ``cancel() -> bool``; True stops with :class:`Cancelled` (partial files are removed).
    """
    path = Path(path)
    h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if h < 64 or w < 64:
        raise ConfigError(f"{path}: slide size {h}x{w} is too small (at least 64x64)")
    if tile % 16:
        raise ConfigError(f"{path}: TIFF tile size {tile} must be a multiple of 16")
    codec = {"jpeg": "jpeg", "deflate": "zlib", "zlib": "zlib"}.get(compression)
    if codec is None:
        raise ConfigError(f"{path}: unknown compression {compression!r}; use 'jpeg' or 'deflate'")
    mpp = float(mpp or config.mpp)
    truth = truth_path_for(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{path}: cannot create the output folder ({exc})") from None

    plan = _SlidePlan(config, (h, w), seed)
    shapes = _level_shapes(h, w, tile)
    scratch = Path(tempfile.mkdtemp(prefix=".synth-", dir=path.parent))
    # Both files are written as hidden twins and renamed into place when complete (the truth first:
    # the slide's presence means both are whole); an interrupted run leaves any old pair as it was.
    tmp_path, tmp_truth = temp_twin(path), temp_twin(truth)
    try:
        _write_rgb(tmp_path, plan, shapes, scratch, tile=tile, codec=codec, quality=quality, mpp=mpp,
                   progress=progress, cancel=cancel, name=path.stem)
        _write_truth(tmp_truth, plan, shapes, tile=tile, mpp=mpp, config=config, seed=seed)
        os.replace(tmp_truth, truth)
        os.replace(tmp_path, path)
    finally:
        for p in (tmp_path, tmp_truth):
            p.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("wrote synthetic slide %s (%dx%d, %d levels) and truth %s", path, h, w, len(shapes), truth)
    return path, truth


def _resolution(mpp: float, downsample: float) -> dict:
    per_cm = 1e4 / (mpp * downsample)
    return {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}


class _Scratch:
    """A pyramid level on disk as raw rows, written and read sequentially (plain file I/O, not a
    memory map, so the pages never count against this process's memory)."""

    def __init__(self, path: Path, shape: tuple[int, int]):
        self.path, self.shape = path, shape
        self.row_bytes = shape[1] * 3
        self.rows_written = 0
        self._fh = path.open("wb")

    def append(self, rows: np.ndarray) -> None:
        rows = rows[: self.shape[0] - self.rows_written, : self.shape[1]]
        self._fh.write(np.ascontiguousarray(rows).tobytes())
        self.rows_written += rows.shape[0]

    def close(self) -> None:
        self._fh.close()

    def read(self, y0: int, n: int) -> np.ndarray:
        n = min(n, self.shape[0] - y0)
        with self.path.open("rb") as fh:
            fh.seek(y0 * self.row_bytes)
            data = np.frombuffer(fh.read(n * self.row_bytes), np.uint8)
        return data.reshape(n, self.shape[1], 3)

    def bands(self, n: int):
        for y0 in range(0, self.shape[0], n):
            yield self.read(y0, n)


def _write_rgb(path, plan, shapes, scratch, *, tile, codec, quality, mpp, progress, cancel, name=None) -> None:
    h, w = shapes[0]
    band = 2 * tile  # rows rendered at once: big windows amortise the render margin
    n_bands = math.ceil(h / band)
    lower = [_Scratch(scratch / f"level{i}.raw", s) for i, s in enumerate(shapes[1:], start=1)]

    def level0_tiles():
        for bi in range(n_bands):
            _check_cancel(cancel, str(path))
            y0 = bi * band
            bh = min(band, h - y0)
            rows = np.empty((bh, w, 3), np.uint8)
            small = np.empty((bh // 2, w // 2, 3), np.uint8) if lower else None
            for x0 in range(0, w, band):
                bw = min(band, w - x0)
                rows[:, x0:x0 + bw] = window = plan.rgb(y0, x0, bh, bw)
                if small is not None:  # level 1 from the window in hand (band and x0 are even)
                    reduced = _downsample2(window)
                    small[:, x0 // 2:x0 // 2 + reduced.shape[1]] = reduced
            if small is not None:
                lower[0].append(small)
            for ty in range(0, bh, tile):
                for tx in range(0, w, tile):
                    yield rows[ty:ty + tile, tx:tx + tile]
            if progress is not None:
                progress(bi + 1, n_bands)

    description = (
        f"Aperio Image Library v12.0.0 napari-dfa synthetic\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) "
        f"{'JPEG' if codec == 'jpeg' else 'Deflate'}/RGB Q={quality}|AppMag = {10.0 / mpp:g}|MPP = {mpp:g}"
        f"|Filename = {name or Path(path).stem}|Generator = napari-dfa {__version__}|Seed = {plan.seed[0]}"
    )
    common = {"photometric": "rgb", "compression": codec, "metadata": None}
    if codec == "jpeg":
        common["compressionargs"] = {"level": quality}
    bigtiff = h * w * 3 > 2**31
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        tif.write(level0_tiles(), shape=(h, w, 3), dtype=np.uint8, tile=(tile, tile), description=description,
                  **_resolution(mpp, 1), **common)
        # Lower levels: each from the one above, band by band.
        for src, dst in zip(lower, lower[1:]):
            src.close()
            for rows in src.bands(2 * tile):
                dst.append(_downsample2(rows))
        if lower:
            lower[-1].close()
        # SVS order: the thumbnail (stripped) is page 1, the reduced levels follow as tiled pages.
        thumb = _thumbnail(lower[-1] if lower else None, plan, shapes[0])
        tif.write(thumb, photometric="rgb", compression="jpeg", metadata=None,
                  description=f"Aperio Image Library v12.0.0 napari-dfa synthetic\r\n{w}x{h} -> "
                              f"{thumb.shape[1]}x{thumb.shape[0]} - |MPP = {mpp:g}")
        for level, scratch_level in enumerate(lower, start=1):
            lh, lw = scratch_level.shape
            tif.write(_tiles_of(scratch_level, tile), shape=(lh, lw, 3), dtype=np.uint8, tile=(tile, tile),
                      description=f"Aperio Image Library v12.0.0 napari-dfa synthetic\r\n{w}x{h} -> {lw}x{lh}"
                                  f" - |MPP = {mpp * 2 ** level:g}",
                      **_resolution(mpp, 2**level), **common)


def _thumbnail(smallest, plan, shape0) -> np.ndarray:
    if smallest is None:
        return plan.rgb(0, 0, *shape0)[::4, ::4].copy()
    arr = smallest.read(0, smallest.shape[0])
    while max(arr.shape[:2]) > 1024:
        arr = _downsample2(arr)
    return arr


def _tiles_of(level: _Scratch, tile: int):
    for rows in level.bands(tile):
        for tx in range(0, level.shape[1], tile):
            yield rows[:, tx:tx + tile]


def _write_truth(truth: Path, plan, shapes, *, tile, mpp, config: SynthConfig, seed: int) -> None:
    """Truth labels as a tiled uint8 pyramid (SubIFDs); lower levels by nearest sampling."""
    h, w = shapes[0]
    meta = {
        "axes": "YX",
        "napari_dfa": "synthetic truth labels",
        "class_names": list(config.class_names),
        "class_colors": [list(c) for c in config.class_colors],
        "mpp": mpp,
        "seed": seed,
    }

    def tiles(level: int):
        f = 2**level
        lh, lw = shapes[level]
        for ty in range(0, lh, tile):
            th = min(tile, lh - ty)
            for tx in range(0, lw, tile):
                # A level's pixel (i, j) is the level-0 label at (f·i, f·j): sample the layout directly.
                yield plan.labels(ty * f, tx * f, th, min(tile, lw - tx), step=f)

    with tifffile.TiffWriter(truth, bigtiff=h * w > 2**31) as tif:
        tif.write(tiles(0), shape=(h, w), dtype=np.uint8, tile=(tile, tile), photometric="minisblack",
                  compression="zlib", subifds=len(shapes) - 1, metadata=meta, **_resolution(mpp, 1))
        for level in range(1, len(shapes)):
            tif.write(tiles(level), shape=shapes[level], dtype=np.uint8, tile=(tile, tile),
                      photometric="minisblack", compression="zlib", subfiletype=1, metadata={"axes": "YX"},
                      **_resolution(mpp, 2**level))
