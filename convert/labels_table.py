"""The labels table beside the shards (labels.npy): written by the converter, checked by verify and the pipeline.

Row k holds the label of sample key k, the same label as its `.cls` member, as little-endian int32: a loader
reads a batch's labels with one gather instead of parsing B tar members, and can count the labels of a
whole global batch (all ranks together) without touching the tars. The manifest lists the table with its
size and sha256 (convert.manifest.TableRecord); a manifest without it (a shard set converted before the
table existed) does not load: convert.manifest.StaleManifestError says to convert it again.
"""
from __future__ import annotations

import hashlib
import io
import os
from typing import Optional

import numpy as np

from common.files import write_atomic
from convert.manifest import TableRecord

LABELS_NAME = "labels.npy"
LABELS_DTYPE = np.dtype("<i4")  # the same bytes on every machine


def write_labels(out: str, labels: np.ndarray) -> TableRecord:
    """Write `labels` (label of key 0, 1, ...) as OUT/labels.npy atomically; the same labels give the same
    bytes, so a resumed conversion stays byte-identical to an uninterrupted one."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(labels, dtype=LABELS_DTYPE), allow_pickle=False)
    data = buffer.getbuffer()
    write_atomic(os.path.join(out, LABELS_NAME), data)  # hashed from memory, not read back
    return TableRecord(LABELS_NAME, data.nbytes, hashlib.sha256(data).hexdigest())


def read_labels(path: str) -> np.ndarray:
    """The table as stored (no pickles); OSError or ValueError when it is not a readable .npy file."""
    return np.load(path, allow_pickle=False)


def labels_problem(table: np.ndarray, num_samples: int, num_classes: int) -> Optional[str]:
    """Why `table` cannot be the labels of a shard set of `num_samples` samples and `num_classes` classes
    (its dtype, its shape, or its first row outside 0..num_classes-1, found in one vectorised pass), or None."""
    if table.dtype.kind not in "iu":
        return f"expected integer labels, found dtype {table.dtype}"
    if table.shape != (num_samples,):
        return f"expected shape ({num_samples},) (num_samples), found {table.shape}"
    if table.size and (int(table.min()) < 0 or int(table.max()) >= num_classes):
        row = int(np.flatnonzero((table < 0) | (table >= num_classes))[0])
        return f"row {row} holds label {int(table[row])}, outside 0..{num_classes - 1} (num_classes {num_classes})"
    return None
