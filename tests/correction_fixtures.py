"""What a simulated pathologist paints, shared by the guard and the finetune CLI tests."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_dfa.corrections import simulate
from napari_dfa.synth import SynthConfig

# The case slide of the correction tests: another lab's slide. Its stain strays four times as far
# from the reference as the demo model's training slides (stain_jitter 0.2 against 0.05), and its
# tissue regions are finer than the sample slide's (120 px against 320), so the demo model errs in
# every class there, systematically, and a pathologist has something to correct in each that
# holds beyond the strokes.
CASE_CONFIG = SynthConfig(slide_region_size=120.0, stain_jitter=0.2)
CASE_SEED = 12


def mean_dice(truth, pred, where=None) -> float:
    """Mean Dice against the truth over the classes it holds, on the pixels ``where`` (default: its
    labelled tissue): the corrections benchmark's score (napari_dfa.corrections.simulate.mean_dice)."""
    where = truth > 0 if where is None else where
    return simulate.mean_dice(pred, truth, where, int(truth.max()))[0]


def paint_largest_errors(truth, before, share=0.02):
    """What a pathologist does: for every class, paint the largest regions the model got wrong
    with the true class (inside them, a few pixels from their borders), up to ``share`` of the
    region per class."""
    painted = np.zeros(truth.shape, np.uint8)
    wrong = ndi.binary_opening((truth != before) & (truth > 0), iterations=3)
    lab, n = ndi.label(wrong)
    areas = ndi.sum(wrong, lab, range(1, n + 1))
    majority = [np.bincount(truth[lab == i + 1], minlength=6).argmax() for i in range(n)]
    for c in range(1, 6):
        used = 0
        for i in np.argsort(areas)[::-1]:
            if majority[i] != c:
                continue
            comp = ndi.binary_erosion(lab == i + 1, iterations=4)
            if used + comp.sum() > share * truth.size:
                continue
            painted[comp] = truth[comp]
            used += int(comp.sum())
    return painted


def one_class_strokes(shape, label=5):
    """What a careless pathologist does: three thick diagonal strokes of one class (``label``,
    necrosis for the demo classes) across a 1024² region, over whatever tissue lies there."""
    strokes = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for k in range(3):
        strokes[(np.abs(yy - 200 - 300 * k - 0.5 * (xx - 100)) < 15) & (xx > 100) & (xx < 900)] = label
    return strokes


def confirm_blocks(truth, before, n=2, block=256):
    """What a careful pathologist adds: the ``n`` blocks where the model is most often right,
    labelled as they truly are (a region confirmed as right, or annotated as it is)."""
    scores = sorted(((before[y:y + block, x:x + block] == truth[y:y + block, x:x + block]).mean(), y, x)
                    for y in range(0, truth.shape[0] - block + 1, block)
                    for x in range(0, truth.shape[1] - block + 1, block))[::-1][:n]
    out = np.zeros(truth.shape, np.uint8)
    for _, y, x in scores:
        out[y:y + block, x:x + block] = truth[y:y + block, x:x + block]
    return out
