"""The geometry of a label image's display pyramid (no Qt, no zarr): how many levels, of what shape,
subsampled by what. The labels store builds its levels by it, the labels TIFF writer its SubIFDs."""

from __future__ import annotations

import math

PYRAMID_MIN_SIZE = 256  # stop the display pyramid once the longer side fits this


def pyramid_shapes(shape: tuple[int, int], min_size: int = PYRAMID_MIN_SIZE) -> list[tuple[int, int]]:
    """Shapes of level 0 and its 2× nearest-downsampled levels down to ``min_size``."""
    shapes = [tuple(int(v) for v in shape)]
    while max(shapes[-1]) > min_size:
        h, w = shapes[-1]
        shapes.append((int(math.ceil(h / 2)), int(math.ceil(w / 2))))
    return shapes


def pyramid_factors(shape: tuple[int, int], image_downsamples=None,
                    min_size: int = PYRAMID_MIN_SIZE) -> list[int]:
    """Subsampling factor of each label level relative to label level 0.

    When the image pyramid is known (``image_downsamples``: level-0 image pixels per pixel of each
    image level) the labels get as many levels as the image, spaced as the image's are (NGFF: "the
    same number of entries as the original image"): computed at image level 0, label level k has
    the shape and scale of image level k. Otherwise 2× steps down to ``min_size``."""
    if not image_downsamples:
        return [2**k for k in range(len(pyramid_shapes(shape, min_size)))]
    ds = [float(d) for d in image_downsamples]
    factors = [1]
    for d in ds[1:]:  # integers (nearest subsampling), never finer than the level before
        factors.append(max(factors[-1], int(round(d / ds[0]))))
    return factors
