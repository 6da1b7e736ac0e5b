"""Files on disk written safely: atomically replaced, fsync'ed, and checksummed.

Every file the project writes goes through `write_atomic` (or `atomic_path` where a library insists
on writing the file itself, or a writer streams into it across calls): the bytes go to a temporary name
in the same folder, are flushed to disk, then renamed over the target, so a reader, a crash or a full
disk leaves either the old file or the new one, never half of one. An error removes the temporary
file; a killed process (SIGKILL runs no cleanup) leaves it, and `remove_stale_temporaries` clears such
leftovers from a folder before a rerun writes it again.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Union

PathLike = Union[str, os.PathLike]
# What AtomicPath names its temporary files: hidden, the target's name, the writer's pid, an optional suffix.
_TEMPORARY_NAME = re.compile(r"\..+\.[0-9]+\.tmp(\.[A-Za-z0-9]+)?")


class AtomicPath:
    """`tmp`, a temporary path beside `path` (ending in `suffix`, for writers that choose their format by
    the file name). `commit()` fsyncs the file written there and renames it over `path`; `discard()`
    removes it. As a context manager it yields `tmp`, commits on success and discards on any failure.

    A class rather than a generator: a writer that streams into `tmp` across calls (convert.shard_writer)
    holds one, and an abandoned one leaves its file as a killed process would, not when it is collected.
    """

    def __init__(self, path: PathLike, *, suffix: str = "") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp{suffix}")

    def commit(self) -> Path:
        try:
            with open(self.tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(self.tmp, self.path)
        finally:
            self.discard()  # a no-op once renamed
        return self.path

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def atomic_path(path: PathLike, *, suffix: str = "") -> AtomicPath:
    """`with atomic_path(path) as tmp:` write the file at `tmp`; on success it is fsync'ed and renamed over
    `path`, on any failure removed and the error propagates."""
    return AtomicPath(path, suffix=suffix)


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


def remove_stale_temporaries(folder: PathLike) -> None:
    """Remove the temporary files that atomic writes of a killed process left in `folder`.

    Only for a folder that one writer owns (a conversion's output): a temporary file of another process
    still writing there would be removed too."""
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False) and _TEMPORARY_NAME.fullmatch(entry.name):
            os.remove(entry.path)


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file, read in 8 MiB chunks (shards are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 2**20):
            h.update(chunk)
    return h.hexdigest()
