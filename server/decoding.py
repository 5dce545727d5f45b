"""Untrusted image bytes -> `LoadedImage`: the one place the project decodes client images.

Limits are checked from the header, before any pixel data is decompressed, so a small file that
claims a huge canvas (a decompression bomb) costs nothing. Pixels are decoded only when
something needs them (the localizer, a preview, the embedded engine, a conversion): an upright
8-bit RGB JPEG or PNG goes to a remote engine as the client's own bytes, never decoded here, so
the backend decodes exactly what the gateway measured.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 16-bit and 32-bit integer modes: scaled down to 8 bits instead of clipped at 255.
_WIDE_INTEGER_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
# Still (single-frame) formats whose bytes any Pillow decodes to the same RGB pixels.
_PASSABLE_FORMATS = {"JPEG", "PNG"}
_EXIF_ORIENTATION = 0x0112


class ImageDecodeError(ValueError):
    """An image the service cannot use; `str(error)` is safe to show to the client."""


class EmptyImageError(ImageDecodeError):
    """No bytes at all."""


class CorruptImageError(ImageDecodeError):
    """Bytes that are not a readable image: unknown format, damaged or truncated data, or a
    header declaring zero width or height (Pillow refuses those when opening)."""


class ImageTooLargeError(ImageDecodeError):
    """More pixels than the configured limit (this includes decompression bombs)."""


@dataclass(frozen=True)
class EncodedImage:
    """Bytes as the client sent them, with their MIME type; `data_url` is the client's own
    `data:` URL when the bytes came in one (so it can be forwarded without re-encoding)."""

    mime: str
    data: bytes
    data_url: str | None = None


class LoadedImage:
    """A client's image: its size from the header, its RGB pixels decoded once on first use, and
    the client's bytes (`source`) when decoding them gives exactly those pixels (8-bit RGB JPEG
    or PNG, upright, opaque); `source` is None for images the gateway had to convert."""

    def __init__(self, opened: Image.Image, source: EncodedImage | None) -> None:
        self.width, self.height = opened.size
        self.source = source
        self._opened: Image.Image | None = opened
        self._pixels: Image.Image | None = None
        self._lock = threading.Lock()

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def pixels(self) -> Image.Image:
        """The decoded RGB image (decoded on the first call; raises `CorruptImageError` when the
        data turns out truncated or damaged)."""
        with self._lock:
            if self._pixels is None:
                assert self._opened is not None
                self._pixels = _finish(self._opened, converted=self.source is None)
                self._opened = None
            return self._pixels


def load_image(data: bytes, *, max_pixels: int, data_url: str | None = None) -> LoadedImage:
    """Check `data`'s header (format, size, limits) into a `LoadedImage`, without decoding its
    pixels; `data_url` is the client's `data:` URL that carried the bytes, if any.

    Raises a subclass of `ImageDecodeError` with a client-facing message for anything unusable
    in the header; damaged pixel data surfaces when `pixels()` decodes it.
    """
    image = _open(data, max_pixels)
    if _passable(image):
        return LoadedImage(image, EncodedImage(Image.MIME[image.format or ""], data, data_url))
    return LoadedImage(image, None)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if not data:
        raise EmptyImageError("the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own limit is checked below; Pillow's global bomb warning must not reach logs.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"the image is too large to decode ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise CorruptImageError(
            "the data is not a readable image (unknown format, or a damaged or zero-size header)"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(f"the image header is damaged ({exc})") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} = {width * height} pixels, "
            f"more than the limit of {max_pixels}"
        )
    return image


def _finish(image: Image.Image, *, converted: bool) -> Image.Image:
    """Decode the pixel data; convert to upright 8-bit RGB unless the image already is."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptImageError(f"the image data is truncated or damaged ({exc})") from exc
    if not converted:
        return image
    # A damaged EXIF block loses only the orientation, not the picture.
    with contextlib.suppress(OSError, SyntaxError, ValueError, KeyError, TypeError):
        image = ImageOps.exif_transpose(image)
    return _to_rgb(image)


def _passable(image: Image.Image) -> bool:
    """Whether the client's bytes decode to the pixels the gateway uses, as they are."""
    if image.format not in _PASSABLE_FORMATS or image.mode != "RGB" or "transparency" in image.info:
        return False
    with contextlib.suppress(OSError, SyntaxError, ValueError, KeyError, TypeError):
        return image.getexif().get(_EXIF_ORIENTATION, 1) == 1
    return False


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without clipping wide ranges or blackening alpha."""
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_INTEGER_MODES:
        wide = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(wide / 257.0, 0, 255).round().astype(np.uint8)).convert(
            "RGB"
        )
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        finite = values[np.isfinite(values)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
        return Image.fromarray(np.clip(scaled, 0, 255).round().astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
