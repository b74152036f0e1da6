"""The one image loader used by datasets, the CLI and HKD Studio.

Every image that enters ``hkd`` goes through :func:`load_image_with_scale` (or its
shorthand :func:`load_image`): files on disk and bytes uploaded in the browser
alike. It decodes with Pillow, applies the EXIF orientation, converts every
mode to 8-bit RGB, refuses decompression bombs before decoding, and can
downscale very large photos while telling the caller by how much.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "ACCEPTED_FORMATS",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "ImageError",
    "LoadedImage",
    "load_image",
    "load_image_with_scale",
    "read_image_size",
    "to_tensor",
]

log = logging.getLogger(__name__)

#: Pillow format names that :func:`load_image` decodes; anything else is refused.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP")
#: File suffixes (lower case) of the accepted formats, used to list image folders.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
#: Default pixel limit (width × height): a 50 MP photo is fine, a 30000×30000 PNG is not.
MAX_PIXELS = 50_000_000

_ACCEPTED_TEXT = "JPEG, PNG, WebP or BMP"
# EXIF orientations 5-8 rotate by 90° and therefore swap width and height.
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
# What Pillow's plugins raise on corrupt or truncated data (UnidentifiedImageError
# is an OSError); all of them mean "this is not a readable image".
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


class ImageError(ValueError):
    """An input is not a readable image (or is one that ``hkd`` refuses to decode)."""


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image and how it relates to the original.

    Attributes:
        pixels: ``uint8`` array of shape ``[H, W, 3]``, RGB, EXIF orientation applied.
        original_size: ``(width, height)`` in pixels before any downscaling
            (after EXIF orientation).
        scale: ``pixels`` width / original width (1.0 when not downscaled). Divide
            box coordinates predicted on ``pixels`` by it to get original pixels.
    """

    pixels: np.ndarray
    original_size: tuple[int, int]
    scale: float

    @property
    def downscaled(self) -> bool:
        """Whether ``pixels`` is smaller than the original image."""
        return self.scale < 1.0

    def describe(self) -> str:
        """A short line for the user, e.g. ``"1024×512 (downscaled from 4096×2048)"``."""
        height, width = self.pixels.shape[:2]
        text = f"{width}×{height}"
        if self.downscaled:
            text += f" (downscaled from {self.original_size[0]}×{self.original_size[1]})"
        return text


def _source_name(source: str | Path | bytes) -> str:
    return "uploaded bytes" if isinstance(source, (bytes, bytearray)) else f"'{source}'"


def _open(source: str | Path | bytes, max_pixels: int) -> Image.Image:
    """Open ``source`` lazily (header only) and check its size before any decoding."""
    name = _source_name(source)
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else Path(source)
    try:
        # Pillow warns above its global MAX_IMAGE_PIXELS and raises above twice that;
        # both are bombs to us. Turning the warning into an error keeps the global alone.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(fp, formats=list(ACCEPTED_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"{name} is refused as a decompression bomb: {err}") from err
    except FileNotFoundError:
        raise
    except _DECODE_ERRORS as err:
        raise ImageError(
            f"{name} is not a readable image ({type(err).__name__}: {err}); "
            f"accepted formats are {_ACCEPTED_TEXT}"
        ) from err
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageError(
            f"{name} is refused as a decompression bomb: {width}×{height} = "
            f"{width * height / 1e6:.1f} MP exceeds the limit of {max_pixels / 1e6:.1f} MP"
        )
    return image


def read_image_size(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Return ``(width, height)`` of the image at ``path`` as :func:`load_image` would
    decode it (EXIF orientation applied), reading only the file header.

    Raises:
        ImageError: the file is not an accepted image or exceeds ``max_pixels``.
    """
    with _open(path, max_pixels) as image:
        width, height = image.size
        try:
            orientation = image.getexif().get(_EXIF_ORIENTATION_TAG)
        except _DECODE_ERRORS:
            orientation = None  # unreadable EXIF: load_image ignores it too
    if orientation in _TRANSPOSED_ORIENTATIONS:
        return height, width
    return width, height


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow clips 16-bit values to 255 when converting; rescale instead so a
        # 16-bit grayscale PNG keeps its contrast.
        values = np.asarray(image, dtype=np.float32) / 257.0
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels often hold arbitrary RGB; composite onto white so the
        # detector sees what an image viewer shows.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def load_image_with_scale(
    source: str | Path | bytes,
    *,
    max_side: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> LoadedImage:
    """Decode an image file or uploaded bytes to RGB pixels.

    Args:
        source: a path to a JPEG/PNG/WebP/BMP file, or the file's bytes.
        max_side: if given, images whose longer side exceeds it are downscaled
            (aspect kept) so that the longer side equals ``max_side`` pixels.
        max_pixels: width × height above which the image is refused undecoded.

    Returns:
        A :class:`LoadedImage` with ``pixels`` ``uint8 [H, W, 3]`` and the scale
        factor applied.

    Raises:
        ImageError: not an accepted image, truncated/corrupt, or too many pixels.
        FileNotFoundError: ``source`` is a path that does not exist.
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels or None, got {max_side}")
    name = _source_name(source)
    with _open(source, max_pixels) as image:
        try:
            image.load()
        except _DECODE_ERRORS as err:
            raise ImageError(
                f"{name} is not a readable image: it is truncated or corrupt "
                f"({type(err).__name__}: {err}); accepted formats are {_ACCEPTED_TEXT}"
            ) from err
        try:
            oriented = ImageOps.exif_transpose(image)
        except _DECODE_ERRORS as err:
            # A broken EXIF block should not make an otherwise fine photo unusable.
            log.debug("ignoring unreadable EXIF orientation of %s: %s", name, err)
            oriented = image
        rgb = _to_rgb(oriented)

    original_size = rgb.size
    scale = 1.0
    if max_side is not None and max(original_size) > max_side:
        scale = max_side / max(original_size)
        new_size = tuple(max(1, round(side * scale)) for side in original_size)
        # reducing_gap: a cheap box reduction first, then Lanczos; fast for big photos.
        rgb = rgb.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        scale = new_size[0] / original_size[0]
    # np.array (not asarray): a writable copy, so torch.from_numpy does not warn.
    return LoadedImage(pixels=np.array(rgb, dtype=np.uint8), original_size=original_size, scale=scale)


def load_image(
    source: str | Path | bytes,
    *,
    max_side: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """Decode an image to ``uint8 [H, W, 3]`` RGB; see :func:`load_image_with_scale`."""
    return load_image_with_scale(source, max_side=max_side, max_pixels=max_pixels).pixels


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """Convert ``uint8 [H, W, 3]`` RGB pixels to a ``float32 [3, H, W]`` tensor in [0, 1]."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 pixels of shape [H, W, 3], got {pixels.dtype} {tuple(pixels.shape)}"
        )
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(255.0)
