"""Write one tar shard and its DALI index (webdataset layout) under temporary names, then rename both.

The bytes are exactly what webdataset's TarWriter writes for the same samples with a fixed mtime,
owner and mode (tests/convert/test_shard_writer.py compares them), but the 512-byte ustar headers
are filled in from a template here: TarWriter goes through tarfile's generic header code, about
70 us a sample, which made it the slowest step of a conversion, slower than decoding the image.
The DALI index line of each sample (`ext offset size name` per member, offsets of the member's
data, as DALI's wds2idx writes them) is written as the tar is written.

The tar streams into a common.files.AtomicPath across calls; a failing write drops its temporary file
and, for want of space or permission, becomes common.files.WriteError naming the shard, as every file written
through common.files does.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional

from common.files import atomic_path, write_atomic
from convert.manifest import ShardRecord

_BLOCK = 512
_RECORD = 20 * _BLOCK  # tarfile pads the archive to a multiple of its record size
_ZEROS = bytes(_BLOCK)
_FLUSH_BYTES = 4 * 2**20
INDEX_VERSION = "v1.2"
OWNER = "adadistill"
MODE = 0o444


def key_name(key: int) -> str:
    """The 9-digit, dot-free sample key (DALI takes everything after the first dot as the extension)."""
    return f"{key:09d}"


def _template() -> tuple:
    info = tarfile.TarInfo("x")
    info.size, info.mtime, info.mode, info.uname, info.gname = 0, 0, MODE, OWNER, OWNER
    header = bytearray(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
    header[0:100] = bytes(100)  # name
    header[124:136] = bytes(12)  # size
    header[148:156] = b" " * 8  # checksum, counted as spaces (POSIX ustar)
    return bytes(header), sum(header)


_HEADER, _HEADER_SUM = _template()


def ustar_header(name: str, size: int) -> bytes:
    """The ustar header tarfile writes for a regular file `name` of `size` bytes (our fixed owner/mode/mtime)."""
    raw_name = name.encode("ascii")
    if len(raw_name) > 100 or size >= 8**11:
        raise ValueError(f"tar member {name!r} of {size} bytes does not fit a plain ustar header")
    raw_size = b"%011o\0" % size
    checksum = _HEADER_SUM + sum(raw_name) + sum(raw_size)
    header = bytearray(_HEADER)
    header[0 : len(raw_name)] = raw_name
    header[124:136] = raw_size
    header[148:156] = b"%06o\0 " % checksum
    return bytes(header)


class ShardWriter:
    """Write samples (key, image bytes, label) to `<directory>/<name>.tar` and `.idx`, atomically."""

    def __init__(self, directory: str, name: str, ext: str) -> None:
        self.tar_path = os.path.join(directory, name + ".tar")
        self.idx_path = os.path.join(directory, name + ".idx")
        if ext <= "cls":
            raise ValueError(f"ShardWriter: image extension {ext!r} must sort after 'cls' (the members' order)")
        self.ext = ext
        self._tar = atomic_path(self.tar_path)
        self._f = open(self._tar.tmp, "wb")
        self._sha = hashlib.sha256()
        # Samples gather as a list of parts, joined (the one copy of their bytes in this process), written
        # and hashed a few MB at a time; the hashing runs in a thread (hashlib releases the GIL on large
        # buffers), beside the next samples' Python work.
        self._parts: list = []
        self._flushed = 0  # the offset up to which the tar is written
        self._hashing = ThreadPoolExecutor(1, thread_name_prefix="shard-sha256")
        self._hashed: Optional[Future] = None
        # The disk catches up as the shard is written: a thread flushes what was written so far (fdatasync)
        # whenever the last flush is done, so the fsync before the rename has only the tail left to wait for
        # (the bench shard's write pass: 0.12 s -> 0.09 s, of which the final fsync 0.045 s -> 0.01 s).
        self._syncing = ThreadPoolExecutor(1, thread_name_prefix="shard-fdatasync")
        self._synced: Optional[Future] = None
        self._lines = []
        self._offset = 0
        self.samples = 0

    def _emit(self, size: int, *parts) -> None:
        """Queue `parts`, `size` bytes in all (the caller knows it: no sum over the parts a sample)."""
        self._parts += parts
        self._offset += size
        if self._offset - self._flushed >= _FLUSH_BYTES:
            self._flush()

    def _flush(self, sync: bool = True) -> None:
        chunk = b"".join(self._parts)
        self._parts, self._flushed = [], self._offset
        if self._hashed is not None:
            self._hashed.result()  # one chunk at a time, in order
        self._hashed = self._hashing.submit(self._sha.update, chunk)
        try:
            self._f.write(chunk)
            if sync and (self._synced is None or self._synced.done()):
                self._f.flush()
                self._wait_for_sync()  # done already: re-raises its error, if any
                self._synced = self._syncing.submit(os.fdatasync, self._f.fileno())
        except OSError as error:
            self._failed(error)
            raise

    def _wait_for_sync(self) -> None:
        if self._synced is not None:
            self._synced.result()

    def _digest(self) -> str:
        if self._hashed is not None:
            self._hashed.result()
        return self._sha.hexdigest()

    def _failed(self, error: OSError) -> None:
        """Drop the temporary file; raise common.files.WriteError naming the shard when `error` is a full disk, a refused
        permission or a read-only file system (the AtomicPath's own rule for a failed `with` block)."""
        self.abort()
        self._tar.__exit__(type(error), error, error.__traceback__)

    def write(self, key: int, image: bytes, label: int) -> None:
        name = key_name(key)
        cls = b"%d" % int(label)
        cls_at = self._offset + _BLOCK
        image_at = cls_at + _BLOCK + _BLOCK  # a label is under 512 bytes: one block of data
        # Members in sorted extension order, as TarWriter writes them: "cls" before "jpg" and "raw".
        self._lines.append(f"cls {cls_at} {len(cls)} {name}.cls {self.ext} {image_at} {len(image)} {name}.{self.ext}")
        pad = -len(image) % _BLOCK
        self._emit(3 * _BLOCK + len(image) + pad, ustar_header(f"{name}.cls", len(cls)), cls, _ZEROS[len(cls):],
                   ustar_header(f"{name}.{self.ext}", len(image)), image, _ZEROS[:pad])
        self.samples += 1

    def close(self) -> Optional[ShardRecord]:
        """Finish the tar, write the index, rename both into place; returns the manifest record (None for a
        shard without samples, which leaves no file)."""
        try:
            return self._close()
        finally:  # every way out: the two threads end with the shard
            self._hashing.shutdown()
            self._syncing.shutdown()

    def _close(self) -> Optional[ShardRecord]:
        end = 2 * _BLOCK + (-(self._offset + 2 * _BLOCK) % _RECORD)  # two zero blocks, then up to a record
        self._emit(end, bytes(end))
        self._flush(sync=False)  # the fsync before the rename syncs the tail
        try:
            self._wait_for_sync()
            self._f.close()  # flushes the last buffered bytes: where a full disk may show itself
        except OSError as error:
            self._failed(error)
            raise
        if self.samples == 0:
            self._tar.discard()
            return None
        # The index first: a tar under its final name always has its index beside it.
        try:
            write_atomic(self.idx_path, f"{INDEX_VERSION} {self.samples}\n" + "\n".join(self._lines) + "\n")
        except BaseException:
            self._tar.discard()
            raise
        try:
            self._tar.commit()  # fsync and rename
        except OSError as error:
            self._failed(error)
            raise
        return ShardRecord(
            name=os.path.basename(self.tar_path), samples=self.samples, bytes=self._offset,
            sha256=self._digest(),
        )

    def abort(self) -> None:
        """Drop the temporary file (a failed conversion leaves no half shard under a final name)."""
        self._hashing.shutdown(wait=True, cancel_futures=True)
        self._syncing.shutdown(wait=True, cancel_futures=True)  # before the file it syncs is closed
        try:
            self._f.close()
        except OSError:
            pass  # the flush of a write that already failed (a full disk): the file is closed all the same
        self._tar.discard()
