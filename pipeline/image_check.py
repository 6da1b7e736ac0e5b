"""Say which encoded image does not decode, and why: before DALI sees it, and after DALI refused a batch.

DALI's decoder is C++ that trusts its input: a JPEG cut inside its header made nvImageCodec's parser
end the process with SIGSEGV (exit 139, nothing printed), and other bad bytes fail the whole batch with
a multi-line dump that does not say which image. So every encoded image gets a header check first
(`header_problem`: about 1 us for a JPEG, whose markers up to the scan libjpeg-turbo parses), and when
DALI still refuses a batch (a header that parses over a scan that does not), `first_undecodable` decodes
the suspects one by one with Pillow to name the culprit.
"""
from __future__ import annotations

import io
import struct
from typing import Optional, Sequence

import numpy as np
import simplejpeg
from PIL import Image

from common.errors import InputError

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# What DALI's image decoder takes besides JPEG and PNG, by Pillow's format names (PPM covers PNM).
_OTHER_FORMATS = {"BMP": "BMP", "TIFF": "TIFF", "JPEG2000": "JPEG 2000", "WEBP": "WebP", "PPM": "PNM"}
TAKEN = "JPEG, PNG, BMP, TIFF, JPEG 2000, WebP or PNM"
_ENCODED_TYPES = (bytes, bytearray, memoryview, np.ndarray)


class UndecodableImageError(InputError, ValueError):
    """An encoded image that does not decode. `item`: its position in the sequence given (None when DALI
    refused a batch and no single culprit was found); `reason`: why, without the position."""

    def __init__(self, message: str, *, item: Optional[int] = None, reason: str = "") -> None:
        super().__init__(message)
        self.item, self.reason = item, reason or message


def _as_array(item) -> np.ndarray:
    return item if isinstance(item, np.ndarray) and item.dtype == np.uint8 else np.frombuffer(item, np.uint8)


def jpeg_size(data: np.ndarray) -> Optional[tuple[int, int]]:
    """(height, width) of a JPEG whose header parses (the common case, about 1 us), else None: then
    header_problem says whether the bytes are another image DALI takes or why they are none."""
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:  # not a JPEG, or a header that does not parse
        return None
    return (height, width) if height > 0 and width > 0 else None


def header_problem(item) -> Optional[str]:
    """None when `item` looks like an image DALI decodes (its header parses), else why not."""
    if not isinstance(item, _ENCODED_TYPES):
        return f"expected encoded bytes, found {type(item).__name__}"
    data = _as_array(item)
    if data.size == 0:
        return "empty: 0 bytes"
    head = data[:33].tobytes()
    if head.startswith(_JPEG_MAGIC):
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError as err:
            return f"JPEG header does not parse: {err}"
        return None if height > 0 and width > 0 else f"JPEG header says {height}x{width} pixels"
    if head.startswith(_PNG_MAGIC):
        if len(head) < 33 or head[12:16] != b"IHDR":
            return f"PNG of {data.size} bytes without a complete IHDR chunk"
        width, height = struct.unpack(">II", head[16:24])
        return None if height > 0 and width > 0 else f"PNG header says {height}x{width} pixels"
    try:
        with Image.open(io.BytesIO(data.tobytes())) as im:  # reads the header only
            fmt = im.format
    except Exception:  # Pillow raises several types for bytes that are no image it knows
        return f"not a {TAKEN} image (starts with {head[:8]!r})"
    if fmt not in _OTHER_FORMATS:
        return f"a {fmt} image; the decoder takes {TAKEN}"
    return None


def decode_problem(item) -> Optional[str]:
    """None when `item` decodes in full with Pillow, else why not (slow: for the search after a failure)."""
    problem = header_problem(item)
    if problem is not None:
        return problem
    try:
        with Image.open(io.BytesIO(_as_array(item).tobytes())) as im:
            im.load()
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError ... on damaged data
        return f"{type(err).__name__}: {err}"
    return None


def first_undecodable(items: Sequence, start: int = 0) -> Optional[tuple[int, str]]:
    """(position, reason) of the first of items[start:] that does not decode in full, or None."""
    for i in range(start, len(items)):
        problem = decode_problem(items[i])
        if problem is not None:
            return i, problem
    return None


def dali_reason(error: BaseException) -> str:
    """The line of a DALI error that says what failed (its message is a dump of many lines)."""
    lines = [line.strip() for line in str(error).splitlines()]
    useful = [line for line in lines if line and "no longer valid" not in line and not line.startswith(
        ("File ", "Critical error", "Error in", "which was used", "encountered"))]
    return useful[-1].rstrip(" :") if useful else type(error).__name__
