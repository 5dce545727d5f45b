"""Synthetic pictures for the tests, benchmarks and load tests: deterministic, built offline.

One generator (`picture`): colour gradients with a few flat blocks, distinct per seed, so that
pruning a region changes what a model sees; with `noise`, mild per-pixel noise on top, so that a
JPEG of it compresses and decodes like a photo of the same size.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def picture(seed: int, width: int = 224, height: int = 160, noise: int = 0) -> Image.Image:
    """An RGB picture: gradients and four blocks (pixels +-`noise` at random on top)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    for _ in range(4):
        x0, y0 = rng.integers(0, width - 16), rng.integers(0, height - 16)
        base[y0 : y0 + rng.integers(8, 48), x0 : x0 + rng.integers(8, 48)] = rng.integers(0, 255, 3)
    if noise:
        base += rng.integers(-noise, noise + 1, base.shape)
    return Image.fromarray(base.clip(0, 255).astype(np.uint8))


def photo_jpeg(seed: int, width: int, height: int, quality: int = 90) -> bytes:
    """A JPEG of a noisy `picture`: about the bytes and decoding cost of a photo this size."""
    buffer = io.BytesIO()
    picture(seed, width, height, noise=12).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def noise(seed: int, width: int, height: int) -> Image.Image:
    """Random pixels: incompressible (a PNG of it takes about 3 bytes per pixel)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
