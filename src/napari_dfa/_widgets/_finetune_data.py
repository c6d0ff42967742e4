"""What the Fine-tune widget hands to training and takes back, without any Qt: the region to
segment again, the current labels to replay, a corrected patch written into a whole-slide labels
store, the default number of steps."""

from __future__ import annotations

import logging

import numpy as np

from ..errors import DataError

logger = logging.getLogger(__name__)


def default_steps() -> int:
    """200 steps with a GPU; 40 on a CPU, where a step of the demo model takes ~0.3 s and 40 show
    a painted correction well within 30 s (benchmarks/bench_gui.py)."""
    import torch

    gpu = torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available())
    return 200 if gpu else 40


def resegment_target(viewer, res, recorder):
    """(level, region) to segment again after fine-tuning: the segmented region, or for a
    whole-slide result the patch being corrected; None when there is nothing to refresh."""
    if res is None or res.image_layer not in viewer.layers:
        return None
    if not res.whole_slide:
        return res.level, res.region
    if recorder is None or recorder.layer.name not in viewer.layers:
        return None
    p = recorder.patch
    return (p.level, p.region) if p.level == res.level else None


def replay_source(viewer, res, target, recorder):
    """(level, region, prediction(), corrections) of the region whose current labels are replayed.

    Read on the UI thread (napari layers are not thread-safe), except the prediction of a
    whole-slide result: a zarr read, which ``prediction()`` does in the worker.
    """
    if target is None or res.labels_layer not in viewer.layers:
        return None
    level, region = target
    layer = viewer.layers[res.labels_layer]
    corrected = np.zeros(region[2:], np.uint8)
    if recorder is not None and (recorder.patch.level, recorder.patch.region) == tuple(target):
        corrected = np.array(recorder.layer.data, copy=True)
    if not res.whole_slide:
        prediction = np.array(layer.data, copy=True)
        return level, region, lambda: prediction, corrected
    base = layer.data[0] if layer.multiscale else layer.data
    y0, x0 = region[0] - res.region[0], region[1] - res.region[1]
    return level, region, lambda: np.asarray(base[y0:y0 + region[2], x0:x0 + region[3]]), corrected


def writeback_target(viewer, res, target):
    """(store path, level array names, (y, x) offset) to write a re-segmented patch of a
    whole-slide result into; None for an in-memory region result."""
    if target is None or not res.whole_slide or res.labels_layer not in viewer.layers:
        return None
    layer = viewer.layers[res.labels_layer]
    arrays = layer.data if layer.multiscale else [layer.data]
    names = [a.path.rsplit("/", 1)[-1] for a in arrays]
    return str(res.store_path), names, (target[1][0] - res.region[0], target[1][1] - res.region[1])


def write_patch(store_path: str, level_names: list[str], offset, labels: np.ndarray) -> None:
    """Write ``labels`` at ``offset`` (y, x; store level-0 pixels) into every level of a labels
    pyramid (level k = level 0 subsampled by its factor, nearest), through a writable handle (the
    napari layer holds the store read-only)."""
    import zarr

    try:
        group = zarr.open_group(store_path, mode="r+")
        levels = [group[name] for name in level_names]
    except Exception as exc:  # moved, deleted or read-only store
        raise DataError(f"{store_path}: cannot write the corrected labels back ({exc})") from None
    y0, x0 = (int(v) for v in offset)
    base = levels[0].shape[0]
    for arr in levels:
        f = max(1, int(round(base / arr.shape[0])))
        # the level-0 rows/columns this level samples: multiples of f
        sub = labels[(-y0) % f::f, (-x0) % f::f]
        ys, xs = -(-y0 // f), -(-x0 // f)
        sub = sub[: arr.shape[0] - ys, : arr.shape[1] - xs]
        arr[ys:ys + sub.shape[0], xs:xs + sub.shape[1]] = sub
    logger.info("%s: wrote a corrected %s patch at %s into %d levels", store_path, labels.shape, offset, len(levels))


def as_float(v):
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def fmt_score(v) -> str:
    v = as_float(v)
    return "n/a" if v is None or v != v else f"{v:.3f}"
