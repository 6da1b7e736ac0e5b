"""Which records of a .rec are images: insightface's layout (a header record, images, identity records) or im2rec's.

insightface's layout: record 0 has flag > 0, no payload, and label = (first identity-record key, end); the
images are keys 1..label[0]-1 and the identity records (flag > 0, no payload, label = an identity's image
key range) follow them. An im2rec .rec has no such record: every record is an image. A header that does
not describe its records would drop or invent images without a word, so it is checked against them:
whole, finite keys that fit the index, images ending where the identity records begin, no record past
the announced ones. Every disagreement is a RecordIOError naming the file and the values.
"""
from __future__ import annotations

import bisect
import math
from typing import Optional, Sequence

import numpy as np

from convert.recordio import RecordIOError, RecordReader, unpack


def _float32_step(value: float) -> int:
    """How far apart neighbouring float32 numbers lie around `value`: the header's keys are float32, exact
    only below 2**24 (insightface writes them so; Glint360K's 17M images go past it)."""
    return max(1, int(np.spacing(np.float32(abs(value)))))


def _is_identity_record(reader: RecordReader, key: int) -> bool:
    header, payload = unpack(reader.read(key))
    return header.flag > 0 and not payload


def _images_end_at(reader: RecordReader, key: int) -> bool:
    """Whether the images end just before `key`: key - 1 is an image (or the header) and `key` an identity
    record (or past the last record)."""
    if key - 1 not in reader or (key > 1 and _is_identity_record(reader, key - 1)):
        return False
    return key not in reader or _is_identity_record(reader, key)


def _images_end(reader: RecordReader) -> int:
    """Where the identity records begin, found by bisection over the positive keys (a few reads): the key
    where "is an identity record" turns true, as it does once in insightface's layout."""
    keys = np.sort(reader.keys[reader.keys > 0]).tolist()
    boundary = bisect.bisect_left(keys, True, key=lambda k: _is_identity_record(reader, k))
    return keys[boundary] if boundary < len(keys) else (keys[-1] + 1 if keys else 1)


def _header_ranges(reader: RecordReader) -> Optional[tuple[int, Optional[int]]]:
    """(first identity-record key, end of the identity records or None), as record 0 announces them, checked to
    be whole numbers that fit the index; None when record 0 is no insightface header."""
    if 0 not in reader:
        return None
    header, payload = unpack(reader.read(0))
    if not (header.flag > 0 and not payload):
        return None
    where = f"{reader.path_rec}: header record (key 0)"
    values = list(header.label[:2])
    for v in values:
        if not (math.isfinite(v) and v.is_integer() and v >= 1):
            raise RecordIOError(f"{where}: label {values} holds {v}, expected key numbers >= 1 "
                                f"(first identity-record key, end of the identity records)")
    first = int(values[0])
    end = int(values[1]) if len(values) > 1 else None
    if end is not None and end < first:
        raise RecordIOError(f"{where}: label {values} ends the identity records at key {end}, before they begin "
                            f"at key {first}")
    last = int(reader.keys.max())
    if first - 1 > last or (end is not None and end - 1 > last + _float32_step(end)):
        announced = f"image keys 1..{first - 1}"
        if end is not None and end > first:
            announced += f" and identity records {first}..{end - 1}"
        raise RecordIOError(f"{where}: announces {announced}, but {reader.path_idx or reader.path_rec} holds "
                            f"{len(reader)} records, keys up to {last}: the header does not describe this file")
    return first, end


def insightface_image_end(reader: RecordReader) -> Optional[int]:
    """The key that ends the image records as insightface's header record announces it, None without one.
    RecordIOError naming the file and the values when they are no whole keys (inf, nan) or do not fit the index."""
    ranges = _header_ranges(reader)
    return None if ranges is None else ranges[0]


def image_keys(reader: RecordReader) -> Sequence[int]:
    """The keys of a .rec's image records, in key order for insightface's layout (a range: no memory a record,
    in the converter or its workers), else every key in file order (an int64 array).

    For insightface's layout, checks that the header describes the records (RecordIOError naming the file
    and the counts): every announced image key is in the index, the images end where the identity records
    begin (two reads; where they do not, bisection finds where they do, for the message), and the index
    holds no record beyond the announced ones. Past 2**24 the header's float32 keys may be off by their
    rounding: the real end found within it is used."""
    ranges = _header_ranges(reader)
    if ranges is None:
        return reader.keys
    first, end = ranges
    index = reader.path_idx or reader.path_rec
    absent = np.flatnonzero(~reader.contains(np.arange(1, first, dtype=np.int64))) + 1
    missing = len(absent)
    if missing:
        key = int(absent[0])
        raise RecordIOError(
            f"{index}: header record says image keys 1..{first - 1}, but key {key} is not in the index ({missing} missing)"
        )
    real = first
    if not _images_end_at(reader, first):
        real = _images_end(reader)
        if (abs(real - first) >= _float32_step(first) or not _images_end_at(reader, real)
                or not reader.contains(np.arange(first, real, dtype=np.int64)).all()):
            where = f"{reader.path_rec}: header record (key 0) says the images are keys 1..{first - 1}"
            if real > first:
                raise RecordIOError(f"{where}, but keys {first}..{real - 1} hold images too: {real - first} images "
                                    f"would be left out")
            raise RecordIOError(f"{where}, but keys {real}..{first - 1} are identity records (no image): "
                                f"{first - real} images would be invented")
    if end is not None and len(reader) > end and len(reader) - end >= _float32_step(end):
        raise RecordIOError(f"{index}: holds {len(reader)} records, but the header record (key 0) announces {end}: "
                            f"the header, {real - 1} images and {end - real} identity records; "
                            f"{len(reader) - end} records would be left out")
    return range(1, real)
