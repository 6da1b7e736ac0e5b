"""The growth stage's data: an insightface-layout .rec of N records over C classes, re-using a few JPEGs.

What grows with a dataset is the number of records, not what each image looks like: the converter decodes
and copies every image and the loader indexes every sample whatever their content. So a million records
are written from 64 rendered faces (convert.synthetic.faces), encoded at JPEG quality 75 (about 3.3 kB each:
a million records make a .rec of about 3.5 GB), and each one still decodes as the converter's validation
requires. Classes are contiguous runs of keys, as in MS1MV2's .rec (record i of N is class i * C // N, so
every class holds N // C or N // C + 1 images), followed by insightface's identity records.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import simplejpeg

from bench.settings import BenchError
from common.files import atomic_path
from convert.recordio import IRHeader, RecordWriter, pack
from convert.synthetic.faces import render

DISTINCT_IMAGES = 64  # 8 identities x 8 images, rendered once and cycled through the records
JPEG_QUALITY = 75


def distinct_jpegs(count: int = DISTINCT_IMAGES) -> list:
    """`count` encoded 112x112 synthetic faces (8 per identity), the same on every call."""
    out = []
    for identity in range(-(-count // 8)):
        out += [simplejpeg.encode_jpeg(p, quality=JPEG_QUALITY, colorspace="RGB")
                for p in render(0, identity, list(range(8)))]
    return out[:count]


def class_starts(records: int, classes: int) -> np.ndarray:
    """int64 [classes + 1]: the first image index (0-based) of each class, and `records` at the end."""
    first = -(-np.arange(classes + 1, dtype=np.int64) * records // classes)  # ceil(c * N / C)
    return first


def write_growth_rec(folder: Path, records: int, classes: int) -> tuple:
    """Write folder/train.rec and train.idx (renamed into place when complete); returns their paths.

    Record 0 is insightface's header (label = first identity-record key, end), images are keys 1..N with
    their class as label, identity records N+1..N+C hold each class's key range."""
    if records < 1 or not 1 <= classes <= records:
        raise BenchError(f"--growth-records {records} with --growth-classes {classes}: expected "
                         f"1 <= classes <= records (every class holds an image)")
    jpegs = distinct_jpegs()
    starts = class_starts(records, classes)
    labels = np.repeat(np.arange(classes), np.diff(starts)).tolist()
    os.makedirs(folder, exist_ok=True)
    rec, idx = folder / "train.rec", folder / "train.idx"
    first_id_key = records + 1
    # .idx renamed into place before .rec: a train.rec under its final name is complete.
    with atomic_path(rec) as tmp_rec, atomic_path(idx) as tmp_idx, RecordWriter(tmp_rec, tmp_idx) as writer:
        writer.write_idx(0, pack(IRHeader(2, (float(first_id_key), float(first_id_key + classes)), 0, 0), b""))
        for i, label in enumerate(labels):
            writer.write_idx(i + 1, pack(IRHeader(0, float(label), i + 1, 0), jpegs[i % len(jpegs)]))
        for c, (lo, hi) in enumerate(zip(starts[:-1].tolist(), starts[1:].tolist())):
            key = first_id_key + c
            writer.write_idx(key, pack(IRHeader(2, (float(lo + 1), float(hi + 1)), key, 0), b""))
    return rec, idx
