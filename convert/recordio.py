"""Read and write MXNet RecordIO files (.rec with a key<TAB>offset .idx) without mxnet.

The byte layout follows dmlc-core's recordio.cc, which MXNet's MXIndexedRecordIO uses:
every part starts with the magic 0xced7230a and lrec = cflag << 29 | length, and its payload is
padded with zeros to 4 bytes. When the magic occurs at a 4-aligned position inside a record, the
writer drops those 4 bytes and starts a new part there (cflag 1 = first, 2 = middle, 3 = last);
the reader puts the magic back between parts. A record's payload starts with an IRHeader
(struct 'IfQQ': flag, label, id, id2); when flag > 0, `flag` float32 labels follow it.
Which records of a .rec are images is convert/rec_layout.py's job.
"""
from __future__ import annotations

import mmap
import os
import struct
import warnings
from dataclasses import dataclass
from typing import Iterator, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from common.errors import InputError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24
_MAX_LENGTH = (1 << 29) - 1
_READ_AHEAD = 16 * 1024
_MAX_INDEX_LINE = 4096  # a key<TAB>offset line is about 20 bytes; a longer one means the file is no index


class RecordIOError(InputError, ValueError):
    """A .rec or .idx file that does not hold what RecordIO promises; the message names file and offset."""


@dataclass(frozen=True)
class IRHeader:
    """MXNet's image record header. `label` is a float, or a tuple of floats when flag > 0."""

    flag: int
    label: Union[float, tuple]
    id: int
    id2: int

    def __post_init__(self) -> None:
        if self.flag < 0:
            raise ValueError(f"IRHeader.flag must be >= 0, found {self.flag}")
        if isinstance(self.label, tuple) and len(self.label) != self.flag:
            raise ValueError(f"IRHeader with flag {self.flag} needs {self.flag} labels, found {len(self.label)}")


def pack_header(flag: int, label, id: int, id2: int) -> bytes:
    """Header bytes as mx.recordio.pack writes them: a sequence label becomes flag = len, label 0.

    `flag` is only used when `label` is a scalar, where MXNet forces it to 0 as well; it is kept in
    the signature so that a header reads like MXNet's IRHeader(flag, label, id, id2).
    """
    if np.ndim(label) == 0:
        return struct.pack(_IR_FORMAT, 0, float(label), int(id), int(id2))
    labels = np.asarray(label, dtype="<f4").reshape(-1)
    return struct.pack(_IR_FORMAT, labels.size, 0.0, int(id), int(id2)) + labels.tobytes()


def pack(header: IRHeader, payload: bytes) -> bytes:
    """One record: header (and its float labels) followed by the payload (an encoded image)."""
    return pack_header(header.flag, header.label, header.id, header.id2) + bytes(payload)


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """Split a record into its IRHeader and payload (mx.recordio.unpack without numpy labels)."""
    header, payload = split(record)
    return header, bytes(payload)


def split(record) -> tuple[IRHeader, memoryview]:
    """unpack without the copy: the payload is a view of `record`."""
    if len(record) < IR_SIZE:
        raise RecordIOError(f"record of {len(record)} bytes is shorter than an IRHeader ({IR_SIZE} bytes)")
    flag, label, rid, rid2 = struct.unpack_from(_IR_FORMAT, record, 0)
    payload = memoryview(record)[IR_SIZE:]
    if flag > 0:
        if len(payload) < 4 * flag:
            raise RecordIOError(f"IRHeader says {flag} float labels but only {len(payload)} bytes follow it")
        label = tuple(float(v) for v in np.frombuffer(payload[: 4 * flag], dtype="<f4"))
        payload = payload[4 * flag :]
    return IRHeader(int(flag), label, int(rid), int(rid2)), payload


def encode_record(data: bytes) -> bytes:
    """The bytes dmlc's RecordIOWriter::WriteRecord emits for one record (parts, padding)."""
    n = len(data)
    if n > _MAX_LENGTH:
        raise RecordIOError(f"RecordIO records must be under 2^29 bytes, found {n}")
    out = []
    start = 0
    # The writer only looks for the magic at 4-aligned offsets (recordio.cc); find() is the fast
    # path, alignment is checked on each hit.
    pos = data.find(_MAGIC_BYTES)
    while 0 <= pos <= n - 4:
        if pos % 4 == 0 and pos >= start:
            cflag = 1 if start == 0 else 2
            out.append(struct.pack("<II", MAGIC, cflag << 29 | (pos - start)))
            out.append(data[start:pos])
            start = pos + 4
            pos = data.find(_MAGIC_BYTES, start)
        else:
            pos = data.find(_MAGIC_BYTES, pos + 1)
    cflag = 3 if start != 0 else 0
    out.append(struct.pack("<II", MAGIC, cflag << 29 | (n - start)))
    out.append(data[start:])
    out.append(b"\0" * ((-(n - start)) % 4))
    return b"".join(out)


class RecordWriter:
    """Append records to a .rec and write its .idx (key<TAB>offset), as MXIndexedRecordIO('w') does."""

    def __init__(self, path_rec: Union[str, os.PathLike], path_idx: Union[str, os.PathLike, None]) -> None:
        self.path_rec = os.fspath(path_rec)
        self._rec = open(self.path_rec, "wb")
        self._idx = open(path_idx, "w") if path_idx is not None else None
        self._keys: set = set()

    def write(self, record: bytes) -> int:
        """Write one record without a key; returns its offset."""
        offset = self._rec.tell()
        self._rec.write(encode_record(bytes(record)))
        return offset

    def write_idx(self, key: int, record: bytes) -> int:
        """Write one record under `key` (recorded in the .idx); returns its offset."""
        if key in self._keys:
            raise RecordIOError(f"{self.path_rec}: key {key} written twice")
        self._keys.add(key)
        offset = self.write(record)
        if self._idx is not None:
            self._idx.write(f"{key}\t{offset}\n")
        return offset

    def close(self) -> None:
        self._rec.close()
        if self._idx is not None:
            self._idx.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _index_lines(path_idx: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line of an .idx, read as bytes so that binary garbage is an error naming the line."""
    with open(path_idx, "rb") as f:
        for lineno, raw in enumerate(iter(lambda: f.readline(_MAX_INDEX_LINE), b""), 1):
            if len(raw) == _MAX_INDEX_LINE and not raw.endswith(b"\n"):
                raise RecordIOError(f"{path_idx}:{lineno}: line longer than {_MAX_INDEX_LINE} bytes; "
                                    f"expected 'key<TAB>offset' lines (is this an .idx file?)")
            try:
                yield lineno, raw.decode("ascii")
            except UnicodeDecodeError as e:
                raise RecordIOError(f"{path_idx}:{lineno}: byte 0x{raw[e.start]:02x} at column {e.start + 1} is not "
                                    f"text; expected 'key<TAB>offset' lines (is this an .idx file?)") from None


def _parse_index(path_idx: str, rec_size: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(keys, offsets), int64 in line order, of a well-formed .idx (pyarrow's CSV parser: a dict of Python ints
    over MS1MV2's 5.8M lines held ~1.5 GB in the converter and in each of its workers, and took seconds);
    None for anything else, whose problem `_read_index` then finds and names by line."""
    try:
        table = pacsv.read_csv(
            path_idx, read_options=pacsv.ReadOptions(column_names=["key", "offset"]),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types={"key": pa.int64(), "offset": pa.int64()}))
    except pa.ArrowException:  # not two integer columns on every line (or unreadable): the slow path says where
        return None
    if table.num_rows == 0 or table.column("key").null_count or table.column("offset").null_count:
        return None
    keys, offsets = table.column("key").to_numpy(), table.column("offset").to_numpy()
    if (offsets < 0).any() or (offsets > rec_size - 8).any():
        return None
    if _repeats(keys) or _repeats(offsets):
        return None
    return keys, offsets


def _repeats(values: np.ndarray) -> bool:
    """Whether a value occurs twice (a sort: numpy 2's hashing np.unique took 3 s for a million keys)."""
    ordered = np.sort(values)
    return bool((ordered[1:] == ordered[:-1]).any())


def _read_index(path_idx: str, rec_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) of an .idx, int64 in line order; RecordIOError naming the line where it is malformed."""
    parsed = _parse_index(path_idx, rec_size)
    if parsed is not None:
        return parsed
    offsets: dict = {}
    owner: dict = {}  # offset -> (key, line number): two keys at one offset would read one record twice
    for lineno, line in _index_lines(path_idx):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise RecordIOError(f"{path_idx}:{lineno}: expected 'key<TAB>offset', found {line.rstrip()!r}")
        try:
            key, offset = int(parts[0]), int(parts[1])
        except ValueError:
            raise RecordIOError(f"{path_idx}:{lineno}: expected integers, found {line.rstrip()!r}") from None
        if offset < 0 or offset + 8 > rec_size:
            raise RecordIOError(
                f"{path_idx}:{lineno}: key {key} at offset {offset} lies past the end of the .rec ({rec_size} bytes)"
            )
        if key in offsets:
            raise RecordIOError(f"{path_idx}:{lineno}: key {key} appears twice")
        if offset in owner:
            other, other_line = owner[offset]
            raise RecordIOError(f"{path_idx}:{lineno}: key {key} has offset {offset}, the offset of key {other} "
                                f"(line {other_line}) too: one record would be read twice and another never")
        offsets[key] = offset
        owner[offset] = (key, lineno)
    return np.fromiter(offsets, np.int64, len(offsets)), np.fromiter(offsets.values(), np.int64, len(offsets))


class RecordIndex:
    """key -> record offset over int64 arrays (8 bytes a key where keys are dense, as every .rec's are; 16 where
    they are not), not a dict of Python ints (~100 bytes a key). Picklable: a converter's workers get the
    parent's (RecordReader(..., index=)) instead of each parsing the .idx again."""

    def __init__(self, keys: np.ndarray, offsets: np.ndarray) -> None:
        self.count = len(keys)
        self.lo = int(keys.min()) if self.count else 0
        span = int(keys.max()) - self.lo + 1 if self.count else 0
        if span <= 2 * self.count:  # a table indexed by key - lo, -1 where no record
            self.dense: Optional[np.ndarray] = np.full(span, -1, np.int64)
            self.dense[keys - self.lo] = offsets
            self._by_key = memoryview(self.dense)  # a Python int a lookup, ~0.1 us (a numpy scalar costs ~1 us)
        else:  # keys sorted, offsets alongside: a binary search a lookup
            self.dense = None
            order = np.argsort(keys, kind="stable")
            self.sorted_keys, self.sorted_offsets = keys[order], offsets[order]

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_by_key"}  # a memoryview does not pickle

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.dense is not None:
            self._by_key = memoryview(self.dense)

    def get(self, key) -> Optional[int]:
        key = int(key)
        if self.dense is not None:
            i = key - self.lo
            if 0 <= i < len(self._by_key):
                offset = self._by_key[i]
                return offset if offset >= 0 else None
            return None
        i = int(np.searchsorted(self.sorted_keys, key))
        if i < self.count and int(self.sorted_keys[i]) == key:
            return int(self.sorted_offsets[i])
        return None

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """bool [len(keys)]: which of `keys` have a record."""
        keys = np.asarray(keys, np.int64)
        if self.dense is not None:
            i = keys - self.lo
            inside = (i >= 0) & (i < len(self.dense))
            found = np.zeros(len(keys), bool)
            found[inside] = self.dense[i[inside]] >= 0
            return found
        i = np.minimum(np.searchsorted(self.sorted_keys, keys), max(self.count - 1, 0))
        return (self.sorted_keys[i] == keys) if self.count else np.zeros(len(keys), bool)

    def in_file_order(self) -> np.ndarray:
        """int64: every key, sorted by its record's offset."""
        if self.dense is not None:
            present = np.flatnonzero(self.dense >= 0)
            return present[np.argsort(self.dense[present], kind="stable")] + self.lo
        return self.sorted_keys[np.argsort(self.sorted_offsets, kind="stable")]


class RecordReader:
    """Random access to a .rec through its .idx, or (without one) an index built by scanning.

    `keys` lists the record keys in file order (an int64 array, made on first use); `read(key)` returns the
    joined record bytes; iterating yields (key, record). Every malformed part raises RecordIOError naming file
    and offset.
    """

    def __init__(self, path_rec: Union[str, os.PathLike], path_idx: Union[str, os.PathLike, None] = None, *,
                 index: Optional[RecordIndex] = None) -> None:
        """index: the `index` of a reader of the same files opened before (another process's), used instead
        of reading `path_idx` again."""
        self.path_rec = os.fspath(path_rec)
        if not os.path.isfile(self.path_rec):
            raise RecordIOError(f"{self.path_rec}: no such .rec file")
        self.size = os.path.getsize(self.path_rec)
        self._fd = os.open(self.path_rec, os.O_RDONLY)
        self._map = None  # mapped on the first view()
        self.path_idx = os.fspath(path_idx) if path_idx is not None else None
        if index is not None:
            self._offsets = index
        elif self.path_idx is not None:
            self._offsets = RecordIndex(*_read_index(self.path_idx, self.size))
            pa.default_memory_pool().release_unused()  # the parser's buffers, which the pool would keep
        else:
            warnings.warn(f"{self.path_rec}: no .idx given, scanning the whole file to index it", stacklevel=2)
            offsets = np.fromiter(self._scan(), np.int64)
            self._offsets = RecordIndex(np.arange(len(offsets), dtype=np.int64), offsets)
        self._keys: Optional[np.ndarray] = None

    @property
    def index(self) -> RecordIndex:
        """Where each key's record starts, for RecordReader(..., index=) in another process."""
        return self._offsets

    @property
    def keys(self) -> np.ndarray:
        """int64: the record keys in file order (workers that read by key never build it)."""
        if self._keys is None:
            self._keys = self._offsets.in_file_order()
        return self._keys

    def contains(self, keys) -> np.ndarray:
        """bool [len(keys)]: which of `keys` the index holds, in one vectorised pass."""
        return self._offsets.contains(keys)

    def _scan(self) -> Iterator[int]:
        offset = 0
        while offset < self.size:
            yield offset
            _, offset = self._read_at(offset)

    def _read_at(self, offset: int) -> tuple[bytes, int]:
        """The record starting at `offset` and the offset just after it."""
        parts = []
        pos = offset
        while True:
            # One pread usually holds header and payload (face images are a few KB): no seek, no
            # buffer to invalidate, safe to share between threads.
            chunk = os.pread(self._fd, _READ_AHEAD, pos)
            if len(chunk) < 8:
                raise RecordIOError(f"{self.path_rec}: truncated record header at offset {pos} (file has {self.size} bytes)")
            magic, lrec = struct.unpack_from("<II", chunk, 0)
            if magic != MAGIC:
                raise RecordIOError(f"{self.path_rec}: bad magic 0x{magic:08x} at offset {pos} (expected 0x{MAGIC:08x})")
            cflag, length = lrec >> 29, lrec & _MAX_LENGTH
            allowed = (0, 1) if not parts else (2, 3)
            if cflag not in allowed:
                raise RecordIOError(f"{self.path_rec}: unexpected continuation flag {cflag} at offset {pos}")
            padded = (length + 3) & ~3
            if 8 + padded > len(chunk):
                chunk = chunk[8:] + os.pread(self._fd, padded - (len(chunk) - 8), pos + len(chunk))
                body = chunk
            else:
                body = chunk[8 : 8 + padded]
            if len(body) < padded:
                raise RecordIOError(
                    f"{self.path_rec}: truncated record at offset {pos}: {length} bytes announced, {len(body)} left"
                )
            parts.append(body[:length])
            pos += 8 + padded
            if cflag in (0, 3):
                break
        return parts[0] if len(parts) == 1 else _MAGIC_BYTES.join(parts), pos

    def view(self, key: int) -> memoryview:
        """The record stored under `key`: a view of the memory-mapped .rec where the record is one part (every
        face image of an insightface .rec is; no copy, no system call), else its joined bytes as `read` gives
        them (and `read`'s error for a malformed record)."""
        if self._map is None:
            self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ) if self.size else b""
        offset = self._offsets.get(key)
        if offset is not None and offset + 8 <= self.size:
            magic, lrec = struct.unpack_from("<II", self._map, offset)
            end = offset + 8 + (lrec & _MAX_LENGTH)
            if magic == MAGIC and lrec >> 29 == 0 and end <= self.size:
                return memoryview(self._map)[offset + 8:end]
        return memoryview(self.read(key))

    def __contains__(self, key: int) -> bool:
        return self._offsets.get(key) is not None

    def offset(self, key: int) -> int:
        offset = self._offsets.get(key)
        if offset is None:
            raise KeyError(f"{self.path_rec}: no record with key {key}")
        return offset

    def read(self, key: int) -> bytes:
        """The record stored under `key`, its split parts joined."""
        offset = self.offset(key)
        try:
            return self._read_at(offset)[0]
        except RecordIOError as e:
            if self.path_idx is None:
                raise
            raise RecordIOError(f"{e} (record of key {key} as indexed by {self.path_idx})") from None

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for key in self.keys:
            yield key, self.read(key)

    def __len__(self) -> int:
        return self._offsets.count

    def close(self) -> None:
        if self._map:  # not None, not the b"" of an empty file (no isinstance: __del__ may run at shutdown)
            try:
                self._map.close()
            except BufferError:  # a view() still in use: the map closes when the last view goes
                pass
        self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            self.close()

    def __enter__(self) -> "RecordReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
