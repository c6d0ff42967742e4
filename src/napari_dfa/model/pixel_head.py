"""The pixel head: a light classifier that learns a pathologist's classes from a few strokes.

A DFA model trained on one kind of tissue has features that know that tissue. On a pathologist's
own slides and classes they are not enough: on a held-out set of real H&E and IHC textures with an
own class list, a random forest on the demo model's features scored 0.33 mean Dice where the same
forest on hand-made multi-scale features scored 0.51 (issue 21). Hand-made features alone are what
QuPath's pixel classifier, ilastik and napari-apoc use; Convpaint and FeatureForest use deep
features. The head takes both, per pixel:

- hand-made multi-scale features of the RGB pixels, as ``skimage.feature.multiscale_basic_features``
  computes them (per channel and σ: Gaussian intensity, gradient magnitude, the two Hessian
  eigenvalues), in torch so that they run inside the model on any device and in any tile;
- the model's own stride-4 mask features and its class logits (what the DFA decoder says);
- with ``context`` scales, the model's class probabilities around the pixel (Gaussian-weighted,
  in log), as ilastik's auto-context feeds a first classifier's output to a second: a class that
  is defined by what lies near it — the invasive front, tumour within tens of µm of stroma — is
  invisible to per-pixel colour and texture, but plain in "stroma is close".

standardised, then a 1×1 two-layer MLP adds to the model's class logits (a learned scale of them:
where the strokes say nothing, the model's own answer stands), and the class probabilities are
smoothed over ``smooth`` pixels, since tissue classes come in regions, not single pixels.

It is trained from scratch on every verified pixel (:func:`napari_dfa.training.head.fit_head`),
in seconds on a CPU, with everything before it fixed. It is part of the model: saved in the same
checkpoint (its settings in the config: ``head_sigmas`` and the fields after it), used by
:func:`napari_dfa.inference.segment` like the rest of the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEATURES_PER_SIGMA = 4  # intensity, edges, two Hessian eigenvalues


def _gauss(sigma: float, device, dtype) -> torch.Tensor:
    r = max(1, int(4 * sigma + 0.5))
    t = torch.arange(-r, r + 1, device=device, dtype=dtype)
    k = torch.exp(-(t * t) / (2 * sigma * sigma))
    return k / k.sum()


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every channel of B×C×H×W, reflect-padded (replicate where the
    image is smaller than the kernel)."""
    if sigma <= 0:
        return x
    k = _gauss(sigma, x.device, x.dtype)
    c, r = x.shape[1], (k.numel() - 1) // 2
    mode = "reflect" if r < min(x.shape[-2:]) else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences (d/dy, d/dx), the border replicated."""
    gy = (x[..., 2:, 1:-1] - x[..., :-2, 1:-1]) / 2
    gx = (x[..., 1:-1, 2:] - x[..., 1:-1, :-2]) / 2
    return F.pad(gy, (1, 1, 1, 1), mode="replicate"), F.pad(gx, (1, 1, 1, 1), mode="replicate")


def hand_features(x: torch.Tensor, sigmas, stride: int = 1) -> torch.Tensor:
    """B×(12·len(sigmas))×H/stride×W/stride multi-scale features of a B×3×H×W image in [0, 1].

    Large σ are computed on the image averaged over f×f blocks (σ/f ≥ 2, f ≤ σ/2), then resized:
    the same features within a fraction of a pixel, at a fraction of the cost. Derivatives are
    per level-0 pixel whatever f, so the features do not depend on it."""
    h, w = x.shape[-2] // stride, x.shape[-1] // stride
    out = []
    for s in sigmas:
        f = stride
        while s / (2 * f) >= 2 and min(x.shape[-2:]) // (2 * f) >= 8:
            f *= 2
        xs = F.avg_pool2d(x, f) if f > 1 else x
        g = blur(xs, max(s / f, 0.5) if f > 1 else s)
        gy, gx = _grad(g)
        gyy, gyx = _grad(gy)
        _, gxx = _grad(gx)
        edges = torch.sqrt(gx * gx + gy * gy + 1e-12) / f
        tr, disc = (gxx + gyy) / 2, torch.sqrt(((gxx - gyy) / 2) ** 2 + gyx * gyx + 1e-12)
        feats = torch.cat([g, edges, (tr + disc) / (f * f), (tr - disc) / (f * f)], 1)
        if feats.shape[-2:] != (h, w):
            feats = F.interpolate(feats, size=(h, w), mode="bilinear", align_corners=False)
        out.append(feats)
    return torch.cat(out, 1)


class PixelHead(nn.Module):
    """Class logits from hand-made and deep features (see the module docstring).

    Arguments:
      num_classes: K.
      deep_channels: channels of the model's features it reads (mask features + K class logits).
      sigmas: scales of the hand-made features, in pixels of the model's input.
      hidden: width of the MLP.
      smooth: σ in input pixels of the Gaussian over the class probabilities (0: none).
      stride: the head runs at 1/stride of the input resolution (its logits are upsampled).
      context: σ in input pixels at which it reads the model's class probabilities around each
        pixel (empty: not at all).
    """

    def __init__(self, *, num_classes: int, deep_channels: int, sigmas=(1, 2, 4, 8, 16), hidden: int = 64,
                 smooth: float = 16.0, stride: int = 2, context=()):
        super().__init__()
        self.sigmas = tuple(float(s) for s in sigmas)
        self.smooth = float(smooth)
        self.stride = int(stride)
        self.context = tuple(float(s) for s in context)
        self.num_classes = int(num_classes)
        n = 3 * FEATURES_PER_SIGMA * len(self.sigmas) + int(deep_channels) + self.num_classes * len(self.context)
        # Feature standardisation, set from the training images by fit_head (saved with the model).
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))
        self.base_scale = nn.Parameter(torch.ones(1))
        self.mlp = nn.Sequential(nn.Conv2d(n, hidden, 1), nn.GELU(), nn.Conv2d(hidden, num_classes, 1))
        nn.init.zeros_(self.mlp[2].weight)  # starts as the model itself
        nn.init.zeros_(self.mlp[2].bias)

    @property
    def channels(self) -> int:
        return int(self.mean.numel())

    def features(self, image: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        """B×n×H/stride×W/stride standardised features of ``image`` (B×3×H×W in [0, 1]) and the
        model's ``deep`` features (B×C×h×w, any stride; its last K channels are the class logits)."""
        hand = hand_features(image.float(), self.sigmas, self.stride)
        deep = F.interpolate(deep.float(), size=hand.shape[-2:], mode="bilinear", align_corners=False)
        parts = [hand, deep]
        if self.context:
            p = torch.softmax(deep[:, -self.num_classes:], 1)
            # log: "how near" falls off as a Gaussian's tail, which log makes about linear in distance
            parts += [torch.log(blur(p, s / self.stride).clamp_min(1e-4)) for s in self.context]
        f = torch.cat(parts, 1)
        return (f - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def classify(self, features: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """Logits at the head's stride from standardised ``features`` and the model's ``base``
        logits (resized to them), before smoothing."""
        base = F.interpolate(base.float(), size=features.shape[-2:], mode="bilinear", align_corners=False)
        return self.base_scale * base + self.mlp(features)

    def finish(self, logits: torch.Tensor, size) -> torch.Tensor:
        """Smoothed log-probabilities at ``size`` (H, W) from the head's logits."""
        if self.smooth > 0:
            p = blur(torch.softmax(logits, 1), self.smooth / self.stride)
            logits = torch.log(p.clamp_min(1e-6))
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, image: torch.Tensor, deep: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """B×K×H×W logits of ``image`` (B×3×H×W in [0, 1])."""
        return self.finish(self.classify(self.features(image, deep), base), image.shape[-2:])
