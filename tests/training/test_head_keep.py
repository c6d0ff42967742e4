"""What the pixel head keeps of the model's own answers where nothing is verified, and how a class
carved out of a known one changes that."""

from __future__ import annotations

import numpy as np
import torch

from napari_dfa.training import head as H


def test_a_new_class_is_carved_out_of_the_classes_the_old_model_answered_under_its_strokes():
    """Under the new class 4's strokes the old model said 1 on 70 %, 2 on 24 %, 3 on 6 %: it is
    carved out of 1 only (2 is under the share); a class not kept is never a parent."""
    old = np.zeros((10, 10), np.uint8)
    mask = np.zeros((10, 10), np.uint8)
    mask[:5, :10] = 4  # 50 pixels of the new class
    old[:5, :10] = 1
    old[0, :10] = 2
    old[1, :2] = 2  # 12 of 50: 24 %
    old[2, :3] = 3  # 3 of 50: 6 %
    mask[6:, :] = 2
    old[6:, :] = 2  # strokes of a known class do not count
    assert H.carved_from([old], [mask], keep=[1, 2, 3], new_classes=[4]) == {1: [4]}
    old[1, :2] = 2
    old[2, :1] = 2  # 13 of 50: 26 %
    assert H.carved_from([old], [mask], keep=[1, 2, 3], new_classes=[4]) == {1: [4], 2: [4]}
    assert H.carved_from([old], [mask], keep=[2, 3], new_classes=[4]) == {2: [4]}
    assert H.carved_from([old], [mask], keep=[1, 2], new_classes=[]) == {}
    assert H.carved_from([old], [np.zeros_like(mask)], keep=[1, 2], new_classes=[4]) == {}


def test_the_sure_answers_of_a_parent_class_are_kept_as_it_or_the_class_carved_out_of_it():
    """Where the model is sure of a parent class its answer is kept as a soft target (the new class
    gets HEAD_CARVED_PRIOR of it); other sure classes stay one-hot; unsure cells are not kept."""
    k = 3
    logits = torch.tensor([[9.0, 0.0, 0.0],   # sure 1: the parent
                           [0.0, 9.0, 0.0],   # sure 2
                           [1.0, 0.8, 0.0],   # not sure
                           [0.0, 0.0, 9.0]])  # sure 3: not kept
    feats = torch.arange(8.0).view(4, 2)
    fx, fb, label, target = H._kept_answers((feats, logits), keep=[1, 2], refine={1: [3]})
    assert label.tolist() == [0, 1] and torch.equal(fx, feats[:2]) and torch.equal(fb, logits[:2])
    prior = H.HEAD_CARVED_PRIOR
    assert 0 < prior < 0.5  # the parent stays the answer where nothing says otherwise
    assert torch.allclose(target, torch.tensor([[1 - prior, 0.0, prior], [0.0, 1.0, 0.0]]))
    *_, hard = H._kept_answers((feats, logits), keep=[1, 2])
    assert hard is None  # no class carved out: the plain answers
    assert H._kept_answers((feats, logits), keep=[]) is None
    assert target.shape == (2, k)


def test_the_head_reads_what_lies_around_a_pixel_for_a_class_list_of_ones_own(tiny_segmenter):
    """Context features for new classes (and from then on, once a head reads them); in the model's
    own classes the head is as before. Saved with the model: the setting is in its config."""
    seg = tiny_segmenter()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
    mask = np.zeros((128, 128), np.uint8)
    mask[8:40, 8:40] = 1
    mask[80:120, 80:120] = 2
    own = H.fit_head(seg, [(rgb, mask)], steps=2, folds=2).segmenter
    assert own.model.head.context == () and own.config.head_context == ()
    carved = H.fit_head(seg, [(rgb, mask)], steps=2, folds=2, new_classes=[2]).segmenter
    assert carved.model.head.context == H.HEAD_CONTEXT_SIGMAS == carved.config.head_context
    assert carved.model.head.channels == own.model.head.channels + seg.num_classes * len(H.HEAD_CONTEXT_SIGMAS)
    assert carved.metadata["provenance"]["finetune"]["head"]["context"] == list(H.HEAD_CONTEXT_SIGMAS)
    again = H.fit_head(carved, [(rgb, mask)], steps=2, folds=2).segmenter  # the next round keeps it
    assert again.model.head.context == H.HEAD_CONTEXT_SIGMAS
