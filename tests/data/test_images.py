"""The image loader: formats, modes, EXIF, refusals and downscaling."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from hkd.data.images import (
    ImageError,
    load_image,
    load_image_with_scale,
    read_image_size,
    to_tensor,
)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _two_tone(width: int = 40, height: int = 20) -> Image.Image:
    """Left half red, right half blue: shows where pixels end up."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(pixels)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width × height`` but holds one pixel: a cheap bomb."""
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    # Bytes 12..29 are the IHDR chunk type and data, 29..33 its CRC.
    chunk = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = chunk
    data[29:33] = struct.pack(">I", zlib.crc32(chunk))
    return bytes(data)


@pytest.mark.parametrize(
    ("fmt", "options", "exact"),
    [
        ("PNG", {}, True),
        ("BMP", {}, True),
        ("WEBP", {"lossless": True}, True),
        ("JPEG", {"quality": 95}, False),
    ],
)
def test_accepted_formats_decode_to_rgb_uint8(tmp_path, fmt, options, exact):
    original = _two_tone()
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(_encode(original, fmt, **options))

    pixels = load_image(path)

    assert pixels.shape == (20, 40, 3) and pixels.dtype == np.uint8
    expected = np.asarray(original)
    if exact:
        np.testing.assert_array_equal(pixels, expected)
    else:
        assert np.abs(pixels.astype(int) - expected).mean() < 8


def test_bytes_and_path_give_the_same_pixels(tmp_path):
    data = _encode(_two_tone(), "PNG")
    (tmp_path / "a.png").write_bytes(data)
    np.testing.assert_array_equal(load_image(data), load_image(tmp_path / "a.png"))
    np.testing.assert_array_equal(load_image(data), load_image(str(tmp_path / "a.png")))


def test_grayscale_palette_and_16_bit_become_rgb():
    gray = load_image(_encode(Image.new("L", (4, 3), 77), "PNG"))
    assert gray.shape == (3, 4, 3) and (gray == 77).all()

    palette = load_image(_encode(_two_tone().convert("P"), "PNG"))
    assert palette.shape == (20, 40, 3)
    assert tuple(palette[0, 0]) == (255, 0, 0)

    # Pillow would clip 16-bit values to 255; the loader rescales them instead.
    deep = np.array([[0, 32896, 65535]], dtype=np.uint16)
    pixels = load_image(_encode(Image.fromarray(deep), "PNG"))
    assert pixels[0, :, 0].tolist() == [0, 128, 255]


def test_transparent_pixels_are_composited_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque
    rgba[1, 1] = (0, 0, 0, 0)  # fully transparent black
    pixels = load_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert tuple(pixels[0, 0]) == (10, 20, 30)
    assert tuple(pixels[1, 1]) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "phone.jpg"
    _two_tone(40, 20).save(path, "JPEG", quality=95, exif=exif)

    pixels = load_image(path)

    assert pixels.shape == (40, 20, 3)  # width and height swapped
    assert read_image_size(path) == (20, 40)
    # The red left half is on top once rotated clockwise.
    assert pixels[5, 10, 0] > 200 and pixels[35, 10, 2] > 200


def test_not_an_image_names_the_file_and_the_accepted_formats(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is text, not a picture")
    with pytest.raises(ImageError, match=r"notes\.jpg.*not a readable image.*JPEG, PNG, WebP or BMP"):
        load_image(path)
    with pytest.raises(ImageError, match=r"uploaded bytes.*not a readable image"):
        load_image(b"\x00\x01garbage")
    assert issubclass(ImageError, ValueError)


def test_other_formats_are_refused():
    gif = _encode(_two_tone(), "GIF")
    with pytest.raises(ImageError, match="accepted formats"):
        load_image(gif)


def test_truncated_jpeg_is_an_image_error(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(noise), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.jpg.*truncated or corrupt"):
        load_image(path)


def test_decompression_bomb_is_refused_before_decoding():
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(_png_claiming(30_000, 30_000))
    # Below Pillow's own limit our default (50 MP) still refuses.
    with pytest.raises(ImageError, match=r"decompression bomb.*64\.0 MP exceeds the limit of 50\.0 MP"):
        load_image(_png_claiming(8_000, 8_000))
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(_encode(_two_tone(), "PNG"), max_pixels=100)


def test_large_images_are_downscaled_and_report_the_scale():
    data = _encode(_two_tone(400, 200), "PNG")

    loaded = load_image_with_scale(data, max_side=100)

    assert loaded.pixels.shape == (50, 100, 3)
    assert loaded.original_size == (400, 200)
    assert loaded.scale == pytest.approx(0.25) and loaded.downscaled
    assert loaded.describe() == "100×50 (downscaled from 400×200)"

    small = load_image_with_scale(data, max_side=1000)
    assert small.scale == 1.0 and not small.downscaled and small.describe() == "400×200"
    with pytest.raises(ValueError, match="max_side"):
        load_image(data, max_side=0)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "nope.png")


def test_to_tensor_gives_chw_float_in_unit_range():
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[1, 2] = (255, 51, 0)

    tensor = to_tensor(pixels)

    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    assert tensor[:, 1, 2].tolist() == pytest.approx([1.0, 0.2, 0.0])
    assert tensor.min() >= 0 and tensor.max() <= 1
    with pytest.raises(ValueError, match=r"uint8 pixels of shape \[H, W, 3\]"):
        to_tensor(np.zeros((2, 3), np.uint8))
