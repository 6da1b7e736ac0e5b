"""Files on disk written safely: atomically replaced, fsync'ed, and checksummed.

Every file the project writes goes through `write_atomic` (or `atomic_path` where a library insists
on writing the file itself, or a writer streams into it across calls): the bytes go to a temporary name
in the same folder, are flushed to disk, then renamed over the target, so a reader, a crash or a full
disk leaves either the old file or the new one, never half of one. An error removes the temporary
file; a killed process (SIGKILL runs no cleanup) leaves it, and `remove_stale_temporaries` clears such
leftovers from a folder before a rerun writes it again. A write that fails for want of space or
permission raises WriteError naming the file (and leaves no temporary file).

`output_lock` makes one job the only writer of an output folder: a second job started on the same
folder stops at once with an error naming the holder, and a lock whose holder died is free again.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Union

from common.errors import InputError

PathLike = Union[str, os.PathLike]
# What AtomicPath names its temporary files: hidden, the target's name, the writer's pid, an optional suffix.
_TEMPORARY_NAME = re.compile(r"\..+\.[0-9]+\.tmp(\.[A-Za-z0-9]+)?")
LOCK_NAME = ".adadistill.lock"  # in every output folder a job writes; holds the holder's description


class WriteError(InputError):
    """A file could not be written (no space left, no permission, read-only file system)."""


class OutputLockedError(InputError):
    """Another job holds the output folder."""


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
            try:
                self.commit()
            except OSError as error:
                raise _write_error(self.path, error) from error
        else:
            self.discard()
            if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
                raise _write_error(self.path, exc) from exc


# The failures of writing a file that a user can act on (as opposed to a missing folder, a bug).
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG)


def _write_error(path: Path, error: OSError) -> WriteError:
    return WriteError(f"{path}: cannot write it ({error.strerror or error}); nothing was replaced and no "
                      "temporary file is left; free space or fix the permissions, then run the same command again")


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


@contextlib.contextmanager
def output_lock(folder: PathLike, job: str) -> Iterator[Path]:
    """Hold an exclusive lock on `folder` (created if missing) for the `with` block: one writer per output.

    `fcntl.flock` on `<folder>/.adadistill.lock`, released by the kernel when the holder exits however
    it exits, so a lock left by a killed job never blocks its resume. The file names the holder (job,
    host, pid, start time), which the refusal quotes: on a shared file system the host tells where to
    look. Raises OutputLockedError when another job holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another job"
            raise OutputLockedError(f"{folder}: another job is writing to this folder ({holder}); wait until it "
                                    f"ends, or choose another output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{job}, pid {os.getpid()} on host {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with the next holder)
