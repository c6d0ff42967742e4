"""Slide files the slide and reader tests write: a cheap H&E-like image and an Aperio SVS of it.

Imported by tests/slide/test_slide.py and tests/widgets/test_reader.py.
"""

from __future__ import annotations

import numpy as np
import tifffile

MPP = 0.499


def tissue(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A cheap H&E-like image: white glass, a pink tissue ellipse, purple nuclei, a little noise."""
    rng = np.random.default_rng(seed)
    yy = ((np.arange(h, dtype=np.float32) - h / 2) / (0.4 * h)) ** 2
    xx = ((np.arange(w, dtype=np.float32) - w / 2) / (0.35 * w)) ** 2
    inside = yy[:, None] + xx[None, :] < 1
    img = np.where(inside[..., None], np.array([224, 140, 185], np.uint8), np.array([243, 241, 246], np.uint8))
    ny, nx = rng.integers(0, h, 300), rng.integers(0, w, 300)
    for y, x in zip(ny, nx):
        if inside[y, x]:
            img[max(0, y - 3) : y + 3, max(0, x - 3) : x + 3] = (95, 60, 150)
    # ±6 grey-level noise; no channel is near 0 or 255, so uint8 arithmetic cannot wrap
    noise = rng.integers(0, 13, img.shape, dtype=np.uint8)
    return img + noise - np.uint8(6)


def pyramid(img: np.ndarray, n: int) -> list[np.ndarray]:
    out = [img]
    for _ in range(n - 1):
        out.append(out[-1][::2, ::2].copy())
    return out


def write_svs(path, img, *, compression="zlib", mpp=MPP):
    """Aperio layout: tiled level 0, stripped thumbnail, tiled reduced levels, label and macro."""
    h, w = img.shape[:2]
    head = f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] (256x256) RAW"
    tail = f"|AppMag = 20|StripeWidth = 2040|ScanScope ID = SS1234|MPP = {mpp}"
    levels = pyramid(img, 3)
    with tifffile.TiffWriter(path) as tw:
        tw.write(levels[0], tile=(256, 256), photometric="rgb", compression=compression,
                 description=head + tail, metadata=None)
        tw.write(img[::16, ::16], photometric="rgb", compression=compression,
                 description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} -> thumbnail" + tail, metadata=None)
        for lv in levels[1:]:
            tw.write(lv, tile=(256, 256), photometric="rgb", compression=compression,
                     description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} -> {lv.shape[1]}x{lv.shape[0]}" + tail,
                     metadata=None)
        tw.write(img[:40, :60], photometric="rgb", subfiletype=1, metadata=None,
                 description="Aperio Image Library v12.0.15\r\nlabel 60x40")
        tw.write(img[:50, :90], photometric="rgb", subfiletype=9, metadata=None,
                 description="Aperio Image Library v12.0.15\r\nmacro 90x50")
    return levels
