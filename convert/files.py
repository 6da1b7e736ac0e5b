"""Files on disk written safely: atomically replaced, fsync'ed, and checksummed.

Every file the project writes goes through `write_atomic` (or `atomic_path` where a library insists
on writing the file itself): the bytes go to a temporary name in the same folder, are flushed to disk,
then renamed over the target, so a reader, a crash or a full disk leaves either the old file or the
new one, never half of one, and no temporary file behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside `path` (ending in `suffix`, for writers that choose their format by
    the file name); on success the file written there is fsync'ed and renamed over `path`. On any failure
    the temporary file is removed and the error propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: PathLike, data: Union[bytes, str, Callable[[Any], None]]) -> Path:
    """Write `data` (bytes, text as UTF-8, or a function given the open binary file) to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_json_atomic(path: PathLike, obj: Any) -> Path:
    """`obj` as indented JSON with sorted keys and a final newline, written atomically."""
    return write_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks (shards are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 2**20):
            h.update(chunk)
    return h.hexdigest()
