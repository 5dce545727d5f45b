"""server.decoding: the project's one decoder of untrusted image bytes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from server.decoding import (
    CorruptImageError,
    EmptyImageError,
    ImageDecodeError,
    ImageTooLargeError,
    load_image,
)

LIMIT = 10_000_000


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def decode_image(data: bytes, max_pixels: int = LIMIT) -> Image.Image:
    return load_image(data, max_pixels=max_pixels).pixels()


def png_with_header(width: int, height: int, idat: bytes = b"") -> bytes:
    """A PNG whose IHDR declares any size, with valid CRCs, and (almost) no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(idat))
        + chunk(b"IEND", b"")
    )


def test_rgb_png_round_trips_exactly():
    pixels = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    decoded = decode_image(encode(Image.fromarray(pixels)), max_pixels=LIMIT)
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded), pixels)


def test_empty_bytes_are_rejected_as_empty():
    with pytest.raises(EmptyImageError, match="empty"):
        decode_image(b"", max_pixels=LIMIT)


def test_random_bytes_are_rejected_as_corrupt():
    with pytest.raises(CorruptImageError, match="not a readable image"):
        decode_image(b"definitely not an image" * 10, max_pixels=LIMIT)


def test_truncated_jpeg_is_rejected_as_corrupt_when_its_pixels_are_decoded():
    noise = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG")
    loaded = load_image(data[: len(data) // 2], max_pixels=LIMIT)  # the header is intact
    with pytest.raises(CorruptImageError, match="truncated or damaged"):
        loaded.pixels()


@pytest.mark.parametrize(("width", "height"), [(0, 10), (10, 0), (0, 0)])
def test_zero_size_image_is_rejected(width, height):
    with pytest.raises(CorruptImageError, match="zero-size"):
        decode_image(png_with_header(width, height), max_pixels=LIMIT)


def test_image_over_the_pixel_limit_is_rejected():
    data = encode(Image.new("RGB", (100, 50)))
    assert decode_image(data, max_pixels=5000).size == (100, 50)
    with pytest.raises(ImageTooLargeError, match="5000 pixels, more than the limit of 4999"):
        decode_image(data, max_pixels=4999)


def test_decompression_bomb_is_rejected_from_the_header_without_decoding():
    bomb = png_with_header(60_000, 60_000)  # 3.6 gigapixels declared in a ~60 byte file
    with pytest.raises(ImageTooLargeError, match="too large"):
        load_image(bomb, max_pixels=LIMIT)  # refused at the header: no pixel is decoded


def test_bomb_beyond_pillows_own_limit_is_still_our_error():
    bomb = png_with_header(100_000, 100_000)  # Pillow itself refuses this at open
    with pytest.raises(ImageTooLargeError):
        decode_image(bomb, max_pixels=10**12)


def test_grayscale_becomes_rgb_with_equal_channels():
    gray = Image.fromarray(np.arange(0, 250, 10, dtype=np.uint8).reshape(5, 5), "L")
    decoded = decode_image(encode(gray), max_pixels=LIMIT)
    pixels = np.asarray(decoded)
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(pixels[..., 0], np.asarray(gray))
    np.testing.assert_array_equal(pixels[..., 0], pixels[..., 2])


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    wide = np.array([[0, 257, 32896], [65535, 1000, 50000]], dtype=np.uint16)
    image = Image.fromarray(wide)
    assert image.mode == "I;16"
    decoded = decode_image(encode(image), max_pixels=LIMIT)
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded)[..., 1], [[0, 1, 128], [255, 4, 195]])


def test_rgba_transparency_is_composited_over_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 255, 0)  # fully transparent blue
    decoded = np.asarray(decode_image(encode(Image.fromarray(rgba, "RGBA")), max_pixels=LIMIT))
    assert tuple(decoded[0, 0]) == (255, 0, 0)
    assert tuple(decoded[0, 1]) == (255, 255, 255)


def test_palette_gif_with_transparency_is_composited_over_white():
    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    palette_image.putpixel((0, 0), 0)
    palette_image.putpixel((1, 0), 1)
    decoded = np.asarray(
        decode_image(encode(palette_image, "GIF", transparency=0), max_pixels=LIMIT)
    )
    assert tuple(decoded[0, 0]) == (255, 255, 255)
    assert tuple(decoded[0, 1]) == (0, 255, 0)


def test_cmyk_jpeg_becomes_rgb():
    decoded = decode_image(
        encode(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG"), max_pixels=LIMIT
    )
    assert decoded.mode == "RGB"
    assert np.asarray(decoded).min() > 240  # no ink = white


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()), max_pixels=LIMIT)
    assert decoded.size == (20, 40)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_an_upright_rgb_image_keeps_the_bytes_the_client_sent(fmt):
    data = encode(Image.new("RGB", (16, 8), "red"), fmt)
    source = load_image(data, max_pixels=LIMIT).source
    assert source is not None and (source.mime, source.data) == (Image.MIME[fmt], data)


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.new("RGB", (40, 20), "blue"), "JPEG", exif=exif.tobytes())


@pytest.mark.parametrize(
    "data",
    [
        encode(Image.new("L", (8, 8), 128)),
        encode(Image.new("RGBA", (8, 8), (0, 0, 0, 0))),
        encode(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG"),
        encode(Image.new("RGB", (8, 8), "red"), "GIF"),
        rotated_jpeg(),
    ],
    ids=["grayscale", "transparent", "cmyk", "gif", "exif-rotated"],
)
def test_a_converted_image_has_no_client_bytes_to_pass_on(data):
    assert load_image(data, max_pixels=LIMIT).source is None


def test_every_decode_error_is_a_value_error_with_a_message():
    for data in (b"", b"junk", png_with_header(0, 1), png_with_header(10**5, 10**5)):
        with pytest.raises(ImageDecodeError) as caught:
            decode_image(data, max_pixels=LIMIT)
        assert isinstance(caught.value, ValueError)
        assert str(caught.value)


def test_junk_bytes_stay_a_decode_error_after_ultralytics_is_loaded():
    import crop_localizer.detector  # noqa: F401  (imports Ultralytics, which patches Pillow)

    with pytest.raises(CorruptImageError):
        decode_image(b"junk bytes, not an image", max_pixels=LIMIT)


def test_a_passable_image_keeps_the_clients_data_url():
    data = encode(Image.new("RGB", (16, 8), "red"), "JPEG")
    loaded = load_image(data, max_pixels=LIMIT, data_url="data:image/jpeg;base64,...")
    assert loaded.size == (16, 8)
    assert loaded.source is not None and loaded.source.data_url == "data:image/jpeg;base64,..."
    assert loaded.pixels().getpixel((0, 0))[0] > 240


def test_an_image_that_needs_converting_has_no_source_and_decodes_to_rgb():
    loaded = load_image(encode(Image.new("L", (8, 8), 128)), max_pixels=LIMIT)
    assert loaded.source is None
    assert loaded.pixels().mode == "RGB"
