"""Validate one encoded image by decoding it, and turn it into a shard member (jpeg bytes or raw pixels).

JPEGs are validated with libjpeg-turbo (simplejpeg, strict: warnings such as a premature end are
errors) at 1/8 scale: the whole entropy-coded stream is decoded, which is what catches truncated
or corrupt files, while most of the inverse DCT is skipped. Other formats go through Pillow.

Before any image is decoded its size is read from its header and refused above `max_pixels`
(DEFAULT_MAX_PIXELS unless --max-pixels says otherwise): decoding (and resizing) a 12000x12000 JPEG takes
about 1 GB, and a single such file, by mistake or on purpose, should not stop a conversion by exhausting
memory. Pillow guards its own formats the same way (Image.MAX_IMAGE_PIXELS), but not libjpeg-turbo.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import simplejpeg
from PIL import Image

from common.errors import InputError

JPEG_QUALITY = 95
# Pillow's own default limit (PIL.Image.MAX_IMAGE_PIXELS, 1024 * 1024 * 1024 // 4 // 3), where it starts to
# warn: about 89 megapixels, 256 MiB of RGB pixels. Face crops are 112x112; the largest photos are under 50 MP.
DEFAULT_MAX_PIXELS = 89_478_485


class CorruptImageError(InputError, ValueError):
    """An image that does not decode; the message names where it came from."""


class ImageSizeError(InputError, ValueError):
    """An image of another size than the dataset's without --resize, or larger than the pixel cap; the message
    names it."""


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def _decode_pil(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, ValueError...) on bad data
        raise CorruptImageError(f"{where}: image does not decode ({type(e).__name__}: {e})") from None


def decode(data: bytes, where: str) -> np.ndarray:
    """uint8 HWC RGB pixels of an encoded image; CorruptImageError naming `where` if it does not decode."""
    if is_jpeg(data):
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
        except ValueError as e:
            raise CorruptImageError(f"{where}: JPEG does not decode ({e})") from None
    return _decode_pil(data, where)


def header_size(data: bytes, where: str) -> tuple:
    """(height, width) of an encoded image from its header alone, without decoding it; CorruptImageError when
    the header does not read."""
    if is_jpeg(data):
        try:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError as e:
            raise CorruptImageError(f"{where}: JPEG does not decode ({e})") from None
        return h, w
    try:
        with warnings.catch_warnings():  # Pillow's DecompressionBombWarning: the cap below is the check
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return im.height, im.width
    except Image.DecompressionBombError as e:  # above twice Image.MAX_IMAGE_PIXELS, whatever --max-pixels says
        raise ImageSizeError(f"{where}: image refused by Pillow before decoding ({e})") from None
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError...) on bad data
        raise CorruptImageError(f"{where}: image does not decode ({type(e).__name__}: {e})") from None


def check_pixels(h: int, w: int, max_pixels: int, where: str) -> None:
    """Refuse an image of more than `max_pixels` pixels (ImageSizeError naming it and the flag to raise the cap)."""
    if h * w > max_pixels:
        raise ImageSizeError(f"{where}: image is {h}x{w} = {h * w} pixels, more than the limit of {max_pixels} "
                             f"(pass --max-pixels {h * w} to convert it anyway)")


def validate(data: bytes, where: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple:
    """(height, width) of an image after decoding it to check it; raises CorruptImageError, and ImageSizeError
    for an image of more than `max_pixels` pixels (read from its header, before anything is decoded)."""
    if len(data) == 0:
        raise CorruptImageError(f"{where}: empty image")
    h, w = header_size(data, where)
    check_pixels(h, w, max_pixels, where)
    if not is_jpeg(data):
        h, w = decode(data, where).shape[:2]
        return h, w
    try:
        # Smallest libjpeg-turbo scale (1/8): a full entropy decode, which is what detects damage.
        simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True, min_height=max(1, h // 8), min_width=max(1, w // 8))
    except ValueError as e:
        raise CorruptImageError(f"{where}: JPEG does not decode ({e})") from None
    return h, w


def _resized(pixels: np.ndarray, size: int) -> np.ndarray:
    if pixels.shape[:2] == (size, size):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR))


def to_member(data: bytes, encoding: str, size: int, resize: bool, where: str,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The shard member for one source image.

    jpeg: the source bytes unchanged when they are a JPEG of size x size; a non-JPEG source, or one
    resized (only with `resize`), is re-encoded as JPEG quality 95. raw: uint8 HWC RGB pixels.
    """
    h, w = header_size(data, where)
    if encoding == "jpeg" and is_jpeg(data) and (h, w) == (size, size):
        return data
    check_pixels(h, w, max_pixels, where)
    pixels = decode(data, where)
    if pixels.shape[:2] != (size, size):
        if not resize:
            raise ImageSizeError(
                f"{where}: image is {pixels.shape[0]}x{pixels.shape[1]}, expected {size}x{size} (pass --resize {size})"
            )
        pixels = _resized(pixels, size)
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if encoding == "raw":
        return pixels.tobytes()
    return simplejpeg.encode_jpeg(pixels, quality=JPEG_QUALITY, colorspace="RGB")
