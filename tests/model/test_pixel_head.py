"""The pixel head's context features: what lies around a pixel, as the model sees it."""

from __future__ import annotations

import pytest
import torch

from napari_dfa.errors import ConfigError
from napari_dfa.model.config import ModelConfig
from napari_dfa.model.pixel_head import FEATURES_PER_SIGMA, PixelHead


def _deep_with_a_class_on_the_left(k: int = 3, size: int = 128, pixel_dim: int = 4) -> torch.Tensor:
    """Mask features (zeros) and class logits: class 2 sure on the left quarter, class 1 elsewhere."""
    logits = torch.full((1, k, size, size), -8.0)
    logits[:, 0] = 8.0
    logits[:, 1, :, : size // 4] = 16.0
    return torch.cat([torch.zeros(1, pixel_dim, size, size), logits], 1)


def test_context_features_say_how_near_each_class_is():
    """With context scales, the head reads each class's probability around a pixel: for a class on
    the left, it falls with the distance from that class's edge and does not depend on the pixel's
    own colour; without them the features are as before (heads saved earlier load unchanged)."""
    image = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    deep = _deep_with_a_class_on_the_left()
    plain = PixelHead(num_classes=3, deep_channels=7, sigmas=(1.0, 4.0), stride=1)
    head = PixelHead(num_classes=3, deep_channels=7, sigmas=(1.0, 4.0), stride=1, context=(8.0, 16.0))
    n_plain = 3 * FEATURES_PER_SIGMA * 2 + 7
    assert plain.features(image, deep).shape[1] == plain.channels == n_plain
    assert head.features(image, deep).shape[1] == head.channels == n_plain + 3 * 2
    f = head.features(image, deep)[0]
    near_class2 = f[n_plain + 1]  # σ 8, class 2 (log of its blurred probability)
    row = near_class2[64, 32:100]  # from the edge (x = 32) into class 1
    assert bool((row[1:] <= row[:-1] + 1e-6).all())  # never nearer further away
    assert float(row[0]) > -1.0 and float(row[-1]) < -8.0  # beside it ~log 0.5; far: the floor
    assert torch.equal(f[:n_plain], plain.features(image, deep)[0])
    other_image = head.features(torch.rand(1, 3, 128, 128), deep)[0]
    assert torch.allclose(other_image[n_plain:], f[n_plain:])  # the model's classes, not the pixels


def test_a_config_without_context_is_a_head_without_it():
    """A checkpoint from before context features names no ``head_context``: no context channels."""
    data = ModelConfig(num_classes=3, head_sigmas=(1.0,)).to_dict()
    del data["head_context"]
    assert ModelConfig.from_dict(data).head_context == ()
    assert ModelConfig.from_dict({**data, "head_context": [8, 16]}).head_context == (8.0, 16.0)
    with pytest.raises(ConfigError, match="head_context"):
        ModelConfig.from_dict({**data, "head_context": [0]})
