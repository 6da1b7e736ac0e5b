"""Validate one encoded image by decoding it, and turn it into a shard member (jpeg bytes or raw pixels).

JPEGs are validated with libjpeg-turbo (simplejpeg, strict: warnings such as a premature end are
errors) at 1/8 scale: the whole entropy-coded stream is decoded, which is what catches truncated
or corrupt files, while most of the inverse DCT is skipped. Other formats go through Pillow.
"""
from __future__ import annotations

import io
import numpy as np
import simplejpeg
from PIL import Image

JPEG_QUALITY = 95


class CorruptImageError(ValueError):
    """An image that does not decode; the message names where it came from."""


class ImageSizeError(ValueError):
    """An image of another size than the dataset's, without --resize; the message names it."""


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


def validate(data: bytes, where: str) -> tuple:
    """(height, width) of an image after decoding it to check it; raises CorruptImageError."""
    if len(data) == 0:
        raise CorruptImageError(f"{where}: empty image")
    if not is_jpeg(data):
        h, w = decode(data, where).shape[:2]
        return h, w
    try:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        # Smallest libjpeg-turbo scale (1/8): a full entropy decode, which is what detects damage.
        simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True, min_height=max(1, h // 8), min_width=max(1, w // 8))
    except ValueError as e:
        raise CorruptImageError(f"{where}: JPEG does not decode ({e})") from None
    return h, w


def _resized(pixels: np.ndarray, size: int) -> np.ndarray:
    if pixels.shape[:2] == (size, size):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR))


def to_member(data: bytes, encoding: str, size: int, resize: bool, where: str) -> bytes:
    """The shard member for one source image.

    jpeg: the source bytes unchanged when they are a JPEG of size x size; a non-JPEG source, or one
    resized (only with `resize`), is re-encoded as JPEG quality 95. raw: uint8 HWC RGB pixels.
    """
    if encoding == "jpeg" and is_jpeg(data):
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        if (h, w) == (size, size):
            return data
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
