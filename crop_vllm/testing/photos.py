"""Photo-like test images for load tests and benchmarks, built offline and deterministic."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo_jpeg(seed: int, width: int, height: int, quality: int = 90) -> bytes:
    """A JPEG of flat colour patches with mild noise (compresses and decodes like a photo),
    distinct per seed."""
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(3, 10, size=2)
    patches = Image.fromarray(rng.integers(0, 256, (rows, cols, 3), dtype=np.uint8))
    pixels = np.asarray(patches.resize((width, height), Image.Resampling.NEAREST), np.int16)
    noisy = np.clip(pixels + rng.integers(-12, 13, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
