"""First conversion pass: decode every source image once (in parallel) and collect labels and sizes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from common.files import atomic_path
from convert.image_check import DEFAULT_MAX_PIXELS, CorruptImageError, ImageSizeError, is_jpeg, validate
from convert.worker_pool import spawn_pool, worth_spawning

_SOURCE = None  # the source, in each worker process (set by _init)


@dataclass(frozen=True)
class Validated:
    """Per source item: its label, whether it decoded, whether its member differs from its bytes, its size.

    errors: (source index, message) of each image that did not decode, in source order.
    """

    labels: np.ndarray  # int64 [N], -1 where the image is corrupt
    ok: np.ndarray  # bool [N]
    transcode: np.ndarray  # bool [N]: to_member re-encodes or decodes to raw
    nbytes: np.ndarray  # int64 [N]: member payload size (source size where it is re-encoded)
    errors: tuple

    def save(self, path: str) -> None:
        where = np.array([i for i, _ in self.errors], dtype=np.int64)
        messages = np.array([m for _, m in self.errors], dtype=np.str_)
        with atomic_path(path, suffix=".npz") as tmp:  # np.savez appends .npz to any other name
            np.savez(tmp, labels=self.labels, ok=self.ok, transcode=self.transcode, nbytes=self.nbytes,
                     error_index=where, error_message=messages)

    @classmethod
    def load(cls, path: str) -> "Validated":
        with np.load(path, allow_pickle=False) as z:
            errors = tuple(zip(z["error_index"].tolist(), z["error_message"].tolist()))
            return cls(z["labels"], z["ok"], z["transcode"], z["nbytes"], errors)


def _init(source) -> None:
    global _SOURCE
    _SOURCE = source


def _check_range(task: tuple) -> tuple:
    start, stop, encoding, size, resize, max_pixels = task
    n = stop - start
    labels = np.full(n, -1, np.int64)
    ok = np.zeros(n, bool)
    transcode = np.zeros(n, bool)
    nbytes = np.zeros(n, np.int64)
    errors = []
    for j, i in enumerate(range(start, stop)):
        label, data = _SOURCE.read(i)
        where = _SOURCE.where(i)
        try:
            h, w = validate(data, where, max_pixels)
        except CorruptImageError as e:
            errors.append((i, str(e)))
            continue
        if (h, w) != (size, size) and not resize:
            raise ImageSizeError(f"{where}: image is {h}x{w}, expected {size}x{size} (pass --resize to resize it)")
        labels[j], ok[j] = label, True
        transcode[j] = encoding == "raw" or not is_jpeg(data) or (h, w) != (size, size)
        nbytes[j] = size * size * 3 if encoding == "raw" else len(data)
    return start, labels, ok, transcode, nbytes, errors


def validate_source(source, encoding: str, size: int, resize: bool, workers: int, progress: bool = True,
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> Validated:
    """Decode every image of `source` once; raises on structural errors, wrong sizes and images of more than
    `max_pixels` pixels, records corrupt images."""
    n = len(source)
    chunk = max(32, min(1024, n // max(1, workers * 8)))
    tasks = [(s, min(s + chunk, n), encoding, size, resize, max_pixels) for s in range(0, n, chunk)]
    labels = np.full(n, -1, np.int64)
    ok = np.zeros(n, bool)
    transcode = np.zeros(n, bool)
    nbytes = np.zeros(n, np.int64)
    errors: list = []
    bar = tqdm(total=n, desc="validate", unit="img", disable=not progress, smoothing=0.1)

    def collect(result: tuple) -> None:
        start, lab, o, t, b, errs = result
        stop = start + len(lab)
        labels[start:stop], ok[start:stop], transcode[start:stop], nbytes[start:stop] = lab, o, t, b
        errors.extend(errs)
        bar.update(len(lab))

    try:
        if worth_spawning(workers, len(tasks), n):
            with spawn_pool(min(workers, len(tasks)), _init, (source,)) as pool:
                for result in pool.imap_unordered(_check_range, tasks):
                    collect(result)
        else:
            _init(source)
            for task in tasks:
                collect(_check_range(task))
    finally:
        bar.close()
    errors.sort()
    return Validated(labels, ok, transcode, nbytes, tuple(errors))
