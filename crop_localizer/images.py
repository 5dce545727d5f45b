"""Decode untrusted image bytes into RGB PIL images: the one place the project does this.

The gateway and the localizer both take images from clients, so the size limits, the error
messages and the colour handling live here once. Limits are checked from the header, before
the pixel data is decompressed, so a small file that claims a huge canvas (a decompression
bomb) costs nothing.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 16-bit and 32-bit integer modes: scaled down to 8 bits instead of clipped at 255.
_WIDE_INTEGER_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
# Still (single-frame) formats whose bytes any Pillow decodes to the same RGB pixels.
_SOURCE_FORMATS = {"JPEG", "PNG"}
_SOURCE_KEY = "crop_source"
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


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode `data` into a fully loaded RGB image, upright per its EXIF orientation.

    Grayscale, palette, CMYK and 16-bit images are converted to 8-bit RGB; transparent pixels
    are composited over white. Animated images yield their first frame. Raises a subclass of
    `ImageDecodeError` with a client-facing message for anything unusable.
    """
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
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptImageError(f"the image data is truncated or damaged ({exc})") from exc
    if _usable_as_sent(image):
        image.info[_SOURCE_KEY] = (Image.MIME[image.format], data)
        return image
    # A damaged EXIF block loses only the orientation, not the picture.
    with contextlib.suppress(OSError, SyntaxError, ValueError, KeyError, TypeError):
        image = ImageOps.exif_transpose(image)
    return _to_rgb(image)


def encoded_source(image: Image.Image) -> tuple[str, bytes] | None:
    """(MIME type, bytes) the client sent for `image`, when decoding them gives exactly its
    pixels (8-bit RGB JPEG or PNG, upright, opaque); None when the image was converted. Passing
    these on saves re-encoding (a PNG costs ~30 ms at 672 px) and the receiver's slower decode."""
    return image.info.get(_SOURCE_KEY)


def _usable_as_sent(image: Image.Image) -> bool:
    if image.format not in _SOURCE_FORMATS or image.mode != "RGB" or "transparency" in image.info:
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
