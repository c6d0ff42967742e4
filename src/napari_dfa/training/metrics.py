"""Segmentation metrics: per-class Dice and IoU, dataset-level and per-image, ignore label excluded.

Two averages, named so nobody confuses them:

- **dataset-level** (``dice``, ``iou``, ``mdice``, ``miou``): one confusion matrix accumulated over
  every pixel of the evaluation set, then Dice = 2|P∩G| / (|P| + |G|) and IoU = |P∩G| / |P∪G| per
  class; mDice / mIoU = mean over the classes present in the ground truth. This is what the DFA
  paper and SAM-Path report.
- **per-image** (``image_dice``, ``image_iou``, ``image_mdice``, ``image_miou``): the same scores
  per image (classes present in that image's ground truth), averaged over the images in which the
  class occurs.

Pixels whose ground truth is 0 (ignore) are left out entirely; a prediction of 0 on a labelled
pixel counts as a miss for the true class.
"""

from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(pred, target, num_classes: int) -> np.ndarray:
    """``(K+1)×(K+1)`` int64 counts, rows = ground truth 0..K, columns = prediction 0..K.

    ``pred`` and ``target`` are integer label arrays (numpy or torch) of the same shape.
    """
    n = num_classes + 1
    if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
        p = torch.as_tensor(pred).reshape(-1).long()
        t = torch.as_tensor(target).reshape(-1).long().to(p.device)
        p = p.clamp(0, num_classes)
        idx = t * n + p
        counts = torch.bincount(idx[t > 0], minlength=n * n)
        return counts.reshape(n, n).cpu().numpy().astype(np.int64)
    p = np.clip(np.asarray(pred).reshape(-1).astype(np.int64), 0, num_classes)
    t = np.asarray(target).reshape(-1).astype(np.int64)
    keep = t > 0
    counts = np.bincount(t[keep] * n + p[keep], minlength=n * n)
    return counts.reshape(n, n).astype(np.int64)


def scores_from_confusion(cm: np.ndarray) -> dict:
    """Per-class Dice/IoU (arrays over labels 1..K) and their means over classes present in GT.

    Returns ``dict(dice, iou, present, gt_pixels, pred_pixels, mdice, miou)``. A class absent from
    the ground truth gets NaN Dice/IoU (it does not enter the mean).
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)[1:]
    gt = cm[1:, :].sum(axis=1)  # every labelled pixel of class c, whatever was predicted
    pred = cm[1:, 1:].sum(axis=0)  # predictions of class c on labelled pixels
    present = gt > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(present, 2 * tp / (gt + pred), np.nan)
        iou = np.where(present, tp / (gt + pred - tp), np.nan)
    return {
        "dice": dice,
        "iou": iou,
        "present": present,
        "gt_pixels": gt.astype(np.int64),
        "pred_pixels": pred.astype(np.int64),
        "mdice": float(np.nanmean(dice)) if present.any() else float("nan"),
        "miou": float(np.nanmean(iou)) if present.any() else float("nan"),
    }


class SegmentationMeter:
    """Accumulates dataset-level and per-image scores over an evaluation set.

    Arguments:
      num_classes: K (labels 1..K; 0 is ignored).
    """

    def __init__(self, *, num_classes: int):
        self.num_classes = num_classes
        self.cm = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
        self._img_dice_sum = np.zeros(num_classes)
        self._img_iou_sum = np.zeros(num_classes)
        self._img_count = np.zeros(num_classes, dtype=np.int64)
        self._img_mdice: list[float] = []
        self._img_miou: list[float] = []

    def update(self, pred, target) -> None:
        """Add a batch (``B×H×W``) or a single image (``H×W``) of predicted and true labels."""
        pred = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        target = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
        if pred.ndim == 2:
            pred, target = pred[None], target[None]
        for p, t in zip(pred, target):
            cm = confusion_matrix(p, t, self.num_classes)
            self.cm += cm
            s = scores_from_confusion(cm)
            if not s["present"].any():
                continue  # an image with nothing labelled says nothing per image
            here = s["present"]
            self._img_dice_sum[here] += s["dice"][here]
            self._img_iou_sum[here] += s["iou"][here]
            self._img_count[here] += 1
            self._img_mdice.append(s["mdice"])
            self._img_miou.append(s["miou"])

    def merge(self, other: "SegmentationMeter") -> None:
        """Add another meter's counts (e.g. another DDP rank's share of the images)."""
        self.cm += other.cm
        self._img_dice_sum += other._img_dice_sum
        self._img_iou_sum += other._img_iou_sum
        self._img_count += other._img_count
        self._img_mdice += other._img_mdice
        self._img_miou += other._img_miou

    def compute(self) -> dict:
        """Dataset-level and per-image scores (see the module docstring for the names)."""
        s = scores_from_confusion(self.cm)
        with np.errstate(invalid="ignore", divide="ignore"):
            image_dice = np.where(self._img_count > 0, self._img_dice_sum / self._img_count, np.nan)
            image_iou = np.where(self._img_count > 0, self._img_iou_sum / self._img_count, np.nan)
        s["image_dice"] = image_dice
        s["image_iou"] = image_iou
        s["image_mdice"] = float(np.mean(self._img_mdice)) if self._img_mdice else float("nan")
        s["image_miou"] = float(np.mean(self._img_miou)) if self._img_miou else float("nan")
        s["n_images"] = len(self._img_mdice)
        return s


def scores_by_name(scores: dict, class_names: list[str]) -> dict:
    """JSON-able report keyed by class name, plus ``_mean`` (the two averages) and ``_meta``.

    ``{"tumour": {"dice", "iou", "image_dice", "image_iou", "gt_pixels", "pred_pixels"}, ...,
    "_mean": {"dice", "iou", "image_dice", "image_iou"}, "_meta": {...}}``; NaN (class absent from
    the ground truth) becomes ``None``.
    """

    def num(v):
        v = float(v)
        return None if np.isnan(v) else v

    out: dict = {}
    for k, name in enumerate(class_names):
        out[name] = {
            "dice": num(scores["dice"][k]),
            "iou": num(scores["iou"][k]),
            "image_dice": num(scores["image_dice"][k]) if "image_dice" in scores else None,
            "image_iou": num(scores["image_iou"][k]) if "image_iou" in scores else None,
            "gt_pixels": int(scores["gt_pixels"][k]),
            "pred_pixels": int(scores["pred_pixels"][k]),
        }
    out["_mean"] = {
        "dice": num(scores["mdice"]),
        "iou": num(scores["miou"]),
        "image_dice": num(scores.get("image_mdice", float("nan"))),
        "image_iou": num(scores.get("image_miou", float("nan"))),
    }
    out["_meta"] = {
        "dataset_level": "dice/iou: one confusion matrix over all pixels; mean over classes present in GT",
        "per_image": "image_dice/image_iou: per image, averaged over images containing the class",
        "ignore_label": 0,
        "n_images": int(scores.get("n_images", 0)),
    }
    return out
