"""Evaluation: a model over a dataset split → per-class Dice/IoU keyed by class name."""

from __future__ import annotations

import logging

import torch

from .datasets import EvalTiles, pad_collate
from .metrics import SegmentationMeter, scores_by_name

logger = logging.getLogger(__name__)


def logits_of(model: torch.nn.Module, imgs: torch.Tensor, device: torch.device, *, amp: bool = False):
    """Model logits for a ``B×H×W×3`` uint8 batch (H, W multiples of 32)."""
    x = imgs.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
        return model(x)["logits"].float()


@torch.no_grad()
def validate(model, loader, *, num_classes: int, device: torch.device, criterion=None, amp: bool = False,
             progress=None) -> tuple[float, SegmentationMeter, int]:
    """Loss sum over batches, a filled :class:`SegmentationMeter` and the batch count."""
    was_training = model.training
    model.eval()
    meter = SegmentationMeter(num_classes=num_classes)
    loss_sum, batches = 0.0, 0
    try:
        for i, (imgs, masks) in enumerate(loader):
            logits = logits_of(model, imgs, device, amp=amp)
            masks = masks.to(device)
            if criterion is not None:
                loss_sum += float(criterion(logits, masks))
            batches += 1
            meter.update(logits.argmax(1) + 1, masks)
            if progress is not None:
                progress(i + 1, len(loader))
    finally:
        model.train(was_training)
    return loss_sum, meter, batches


def evaluate(segmenter, dataset, *, batch_size: int = 4, crop: int = 0, progress=None) -> dict:
    """Per-class Dice and IoU of ``segmenter`` on ``dataset`` (pairs of RGB uint8 and mask uint8).

    Arguments:
      segmenter: a :class:`napari_dfa.model.Segmenter`.
      dataset: a sequence of ``(rgb H×W×3 uint8, mask H×W uint8)``, e.g. a
        :class:`~napari_dfa.training.datasets.SamPathDataset` split; 0 in the mask is ignored.
      batch_size: images per forward pass (padded to a common multiple of 32).
      crop: 0 = whole images; else a centre crop of that size.
      progress: ``progress(done, total)`` per batch.

    Returns: ``{class name: {"dice", "iou", "image_dice", "image_iou", "gt_pixels", "pred_pixels"},
    "_mean": {...}, "_meta": {...}}`` (see :func:`napari_dfa.training.metrics.scores_by_name`);
    dice/iou are dataset-level (one confusion matrix over all pixels), image_* per-image averages.
    """
    multiple = int(getattr(segmenter, "input_multiple", 32))
    loader = torch.utils.data.DataLoader(
        EvalTiles(dataset, crop=crop), batch_size=batch_size, shuffle=False,
        collate_fn=lambda b: pad_collate(b, multiple),
    )
    num_classes = len(segmenter.class_names)
    _, meter, _ = validate(segmenter.model, loader, num_classes=num_classes, device=segmenter.device,
                           amp=segmenter.device.type == "cuda", progress=progress)
    return scores_by_name(meter.compute(), list(segmenter.class_names))


def format_report(report: dict) -> str:
    """A Markdown table of an :func:`evaluate` report (dataset-level and per-image Dice/IoU)."""

    def f(v):
        return "—" if v is None else f"{v:.3f}"

    lines = ["| class | Dice | IoU | Dice (per image) | IoU (per image) | GT pixels |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in report.items():
        if name.startswith("_"):
            continue
        lines.append(f"| {name} | {f(r['dice'])} | {f(r['iou'])} | {f(r['image_dice'])} | {f(r['image_iou'])} "
                     f"| {r['gt_pixels']} |")
    m = report["_mean"]
    lines.append(f"| **mean** | **{f(m['dice'])}** | **{f(m['iou'])}** | {f(m['image_dice'])} | {f(m['image_iou'])} | |")
    return "\n".join(lines)
