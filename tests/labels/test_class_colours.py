"""The default class colours stand out from unlabelled H&E where napari shows them (labels at 50 %
opacity over the slide), and only the defaults changed: colours a user saved stay theirs."""

from __future__ import annotations

import itertools

import pytest

from napari_dfa.classes import BCSS, SYNTHETIC, ClassSet
from napari_dfa.labels.palette import HE_REFERENCES, delta_e, looks_like_he, on_tissue
from napari_dfa.model import ModelConfig, Segmenter, load_model

OLD_STROMA = (255, 170, 200)  # eosin pink: the stroma colour of the defaults before


def _check_stands_out(classes: ClassSet) -> None:
    for name, colour in zip(classes.names, classes.colors):
        if name == "other":  # grey on purpose ("anything else"); the overlay figure swaps it
            continue
        assert looks_like_he(colour) is None, (name, colour)
    # Painted at half opacity over eosin-stained tissue, as the labels layer draws it: stroma is
    # still far from every H&E reference and from every other class.
    stroma = on_tissue(classes.colors[classes.names.index("stroma")])
    assert min(delta_e(stroma, ref) for ref in HE_REFERENCES.values()) > 30
    painted = [on_tissue(c) for c in classes.colors]
    assert min(delta_e(a, b) for a, b in itertools.combinations(painted, 2)) > 20


@pytest.mark.parametrize("classes", [BCSS, SYNTHETIC], ids=["bcss", "synthetic"])
def test_default_palettes_stand_out_from_he(classes):
    assert looks_like_he(OLD_STROMA) == "eosin"  # why it changed
    _check_stands_out(classes)


def test_bundled_demo_model_uses_the_new_default(demo):
    _check_stands_out(demo.classes)
    assert demo.class_colors == list(SYNTHETIC.colors)


def test_colours_a_user_saved_are_kept(tmp_path):
    """A model saved with the old pink (or any colour) loads with it: only defaults changed."""
    colors = [(60, 110, 255), (230, 40, 40), OLD_STROMA, (160, 160, 160), (240, 200, 40)]
    seg = Segmenter.from_config(ModelConfig.from_preset("tiny", num_classes=5), class_names=BCSS.names,
                                class_colors=colors, mpp=0.5)
    path = seg.save(tmp_path / "mine.safetensors")
    assert load_model(path).class_colors == colors
    assert ClassSet.of(BCSS.names, colors).colors[2] == OLD_STROMA
