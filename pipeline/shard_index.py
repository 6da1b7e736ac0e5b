"""Where every sample's bytes and label live: the manifest, checked shards, and their parsed `.idx` files.

Sample keys are global indices and shard k holds a contiguous slice of them (docs/DESIGN.md, "Shards"),
so one flat array per field, indexed by the key, locates every sample. The tars are memory-mapped and
read by offset: a batch costs B slices of a mapping, with no tar parsing on the hot path. Labels come from
the converter's labels table (one gather a batch, checked once when opened); a shard set converted before
the table existed does not open (convert.manifest.StaleManifestError says to convert it again).
An index may span several directories laid end to end (pipeline/datasets.py joins them); its `datasets`
say where each one's keys and classes start: messages name a sample's own tar and 9-digit member name.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from common.errors import InputError
from convert.labels_table import labels_problem, read_labels
from convert.manifest import ENCODINGS, EXTENSIONS, MANIFEST_NAME, Manifest
from pipeline.image_check import header_problem, jpeg_size


class ShardError(InputError, RuntimeError):
    """The shards directory does not hold what its manifest promises; the message names the file and the
    sample (or line) where it does not."""


def load_manifest(shards: Path) -> Manifest:
    """The converter's manifest (convert.manifest.Manifest), or an error naming the directory."""
    if not (shards / MANIFEST_NAME).is_file():
        raise ShardError(f"{shards}: no {MANIFEST_NAME}; is this a directory written by `python -m convert`?")
    return Manifest.load(shards)


def image_side(image_size: Any) -> int:
    sides = set(image_size) if isinstance(image_size, (tuple, list)) else {image_size}
    if len(sides) != 1:
        raise ShardError(f"manifest image_size: expected a square size, found {image_size!r}")
    return int(sides.pop())


_IDX_COLUMNS = [f"{part}{m}" for m in (0, 1) for part in ("ext", "offset", "size", "name")]


def _parse_idx(path: Path, first_key: int, count: int) -> tuple[str, np.ndarray]:
    """Parse one DALI webdataset index (`v1.2 <n>`, then per sample `ext offset size name` per member).

    Returns the image member's extension and int64 [count, 4]: image offset, image size, cls offset,
    cls size. Keys must run first_key, first_key+1, ... as the converter writes them. pyarrow's CSV
    parser does the work: a Python loop over MS1MV2's 5.8M lines took ~50 s, this takes a few."""
    try:
        with open(path, "rb") as f:
            header = f.readline().split()
        table = pacsv.read_csv(
            path, read_options=pacsv.ReadOptions(skip_rows=1, column_names=_IDX_COLUMNS),
            parse_options=pacsv.ParseOptions(delimiter=" "),
            convert_options=pacsv.ConvertOptions(column_types={
                c: pa.int64() if c.startswith(("offset", "size")) else pa.string() for c in _IDX_COLUMNS}))
    except OSError as err:
        raise ShardError(f"{path}: cannot read the shard index ({err})") from err
    except pa.ArrowInvalid as err:
        raise ShardError(f"{path}: expected lines of two members, 'ext offset size name' each ({err})") from err
    if header != [b"v1.2", str(count).encode()] or table.num_rows != count:
        raise ShardError(f"{path}: expected header 'v1.2 {count}' and {count} lines, found "
                         f"{b' '.join(header).decode(errors='replace')!r} and {table.num_rows} lines")
    cls_member = next((m for m in (0, 1) if pc.all(pc.equal(table[f"ext{m}"], "cls")).as_py()), None)
    if cls_member is None:
        raise ShardError(f"{path}: expected a .cls member in the same place on every line")
    img_member = 1 - cls_member
    img_ext = pc.unique(table[f"ext{img_member}"]).to_pylist()
    if len(img_ext) != 1 or img_ext[0] not in ENCODINGS:
        raise ShardError(f"{path}: expected one image extension out of {sorted(ENCODINGS)}, found {sorted(img_ext)}")
    expected = np.arange(first_key, first_key + count)
    for m in (cls_member, img_member):
        names = table[f"name{m}"]
        try:
            keys = pc.cast(pc.utf8_slice_codeunits(names, 0, 9), pa.int64()).to_numpy()
        except pa.ArrowInvalid as err:
            raise ShardError(f"{path}: a sample name is not a 9-digit key ({err})") from err
        if not np.array_equal(keys, expected):
            bad = int(np.flatnonzero(keys != expected)[0])
            raise ShardError(f"{path}: sample line {bad + 1}: expected key {expected[bad]:09d}, "
                             f"found {names[bad].as_py()!r}")
    columns = (f"offset{img_member}", f"size{img_member}", f"offset{cls_member}", f"size{cls_member}")
    numbers = np.stack([table[c].to_numpy() for c in columns], 1)
    return img_ext[0], numbers.astype(np.int64)


@dataclass(frozen=True)
class DatasetSpan:
    """One converted directory's place in a union: its own key k is the union's first_key + k, its own
    label c the union's first_class + c. A lone directory starts at 0 and 0."""

    dir: str
    first_key: int
    num_samples: int
    first_class: int
    num_classes: int


@dataclass(frozen=True)
class ShardIndex:
    """All samples of a shards directory (or of several laid end to end), indexed by global key."""

    root: Path  # the directory (the first one of a union)
    paths: tuple[Path, ...]  # the tars, in manifest order (a union: each directory's in turn)
    encoding: str  # "jpeg" or "raw"
    image_size: int
    num_samples: int
    num_classes: int
    shard_of: np.ndarray  # int32 [N]
    table: np.ndarray  # uint32 (int64 for tars over 4 GiB) [N, 4]: image offset, image size, cls offset, cls size
    label_table: np.ndarray  # int32 [N], row = key, the union's classes
    datasets: tuple[DatasetSpan, ...] = ()  # () for one directory: filled in as (root, 0, N, 0, C)
    shard_dataset: Optional[np.ndarray] = None  # int32 [len(paths)]: each tar's dataset; None: all the first

    def __post_init__(self) -> None:
        if not self.datasets:
            object.__setattr__(self, "datasets", (DatasetSpan(str(self.root), 0, self.num_samples, 0,
                                                              self.num_classes),))
        if self.shard_dataset is None:
            object.__setattr__(self, "shard_dataset", np.zeros(len(self.paths), np.int32))

    @property
    def where(self) -> str:
        """The directory, or a union's directories, for messages."""
        return ", ".join(d.dir for d in self.datasets)

    def local_key(self, key: int) -> int:
        """Sample `key`'s key in its own directory (its member name there)."""
        return int(key) - self.datasets[int(self.shard_dataset[int(self.shard_of[key])])].first_key

    @classmethod
    def open(cls, shards: str | os.PathLike) -> "ShardIndex":
        root = Path(shards)
        if not root.is_dir():
            raise ShardError(f"shards: expected a directory written by `python -m convert`, found {str(root)!r}")
        manifest = load_manifest(root)
        paths, exts, first = [], set(), 0
        # Filled shard by shard: every shard's int64 table, joined and then cast, held ~80 bytes a sample at
        # the peak (3.4 GB a rank for WebFace42M's 42M); uint32 (int64 once a tar passes 4 GiB) holds 16.
        total = sum(rec.samples for rec in manifest.shards)
        table = np.empty((total, 4), np.uint32)
        shard_of = np.empty(total, np.int32)
        for k, rec in enumerate(manifest.shards):
            tar = root / rec.name
            if not tar.is_file():
                raise ShardError(f"{tar}: shard {k} of {MANIFEST_NAME} is missing")
            size = tar.stat().st_size
            if size != rec.bytes:
                raise ShardError(f"{tar}: shard {k} has {size} bytes, {MANIFEST_NAME} says {rec.bytes}")
            ext, part = _parse_idx(tar.with_suffix(".idx"), first, rec.samples)
            if part.size and int((part[:, 0] + part[:, 1]).max()) > size:
                raise ShardError(f"{tar.with_suffix('.idx')}: an offset points past the end of {tar.name}")
            if part.size and int(part.max()) >= 2**32 and table.dtype != np.int64:
                table = table.astype(np.int64)
            table[first:first + rec.samples] = part
            shard_of[first:first + rec.samples] = k
            paths.append(tar), exts.add(ext)
            first += rec.samples
        pa.default_memory_pool().release_unused()  # the parsers' buffers, which the pool would keep
        if first != manifest.num_samples:
            raise ShardError(f"{root / MANIFEST_NAME}: shards hold {first} samples, num_samples says "
                             f"{manifest.num_samples}")
        enc = str(manifest.encoding)
        found = sorted(ENCODINGS[e] for e in exts)
        if found != [enc]:
            raise ShardError(f"{root}: {MANIFEST_NAME} says encoding {enc!r}, the .idx files hold {found}")
        side = image_side(manifest.image_size)
        if enc == "raw" and table.size and not (table[:, 1] == side * side * 3).all():
            bad = int(np.flatnonzero(table[:, 1] != side * side * 3)[0])
            raise ShardError(f"{root}: raw sample {bad} holds {table[bad, 1]} bytes, expected {side}x{side}x3")
        return cls(root, tuple(paths), enc, side, int(manifest.num_samples), int(manifest.num_classes), shard_of,
                   table, _label_table(root, manifest))


def _label_table(root: Path, manifest: Manifest) -> np.ndarray:
    """The converter's labels table, checked once against the manifest (size, dtype, shape, and every label
    in 0..num_classes-1 in one vectorised pass). Its sha256 is `python -m convert verify`'s to check, as the
    tars' are: hashing on every open would cost seconds."""
    rec = manifest.labels
    path = root / rec.name
    if not path.is_file():
        raise ShardError(f"{path}: the labels table that {MANIFEST_NAME} lists is missing")
    size = path.stat().st_size
    if size != rec.bytes:
        raise ShardError(f"{path}: labels table of {size} bytes, {MANIFEST_NAME} says {rec.bytes}")
    try:
        labels = read_labels(str(path))
    except (OSError, ValueError) as err:
        raise ShardError(f"{path}: unreadable labels table ({err})") from err
    problem = labels_problem(labels, manifest.num_samples, manifest.num_classes)
    if problem is not None:
        raise ShardError(f"{path}: {problem} ({MANIFEST_NAME} says num_samples {manifest.num_samples}, "
                         f"num_classes {manifest.num_classes})")
    return labels.astype(np.int32, copy=False)


class ShardReader:
    """Reads samples by key from memory-mapped tars; each process opens its own maps lazily."""

    def __init__(self, index: ShardIndex) -> None:
        self.index = index
        # uint8 over each tar's map, which the array holds (its .base): nothing else reads the maps
        self._bytes: list[Optional[np.ndarray]] = [None] * len(index.paths)
        self._checked: Optional[np.ndarray] = None  # bool [N]: keys whose header passed (a map never changes)

    def __getstate__(self) -> dict:  # maps do not cross process boundaries; workers reopen them
        return {"index": self.index}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["index"])

    def _array(self, k: int) -> np.ndarray:
        a = self._bytes[k]
        if a is None:
            with open(self.index.paths[k], "rb") as f:
                a = self._bytes[k] = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
        return a

    def images(self, keys: np.ndarray) -> list[np.ndarray]:
        """uint8 views of each sample's image member (encoded bytes, or HWC pixels for raw shards)."""
        # One vectorised gather, then plain ints: this loop is the per-sample cost of the hot path.
        rows = self.index.table[keys, :2].tolist()
        shards = self.index.shard_of[keys].tolist()
        arrays = [self._bytes[k] if self._bytes[k] is not None else self._array(k) for k in shards]
        out = [a[off:off + size] for a, (off, size) in zip(arrays, rows)]
        if self.index.encoding == "raw":
            side = self.index.image_size
            out = [a.reshape(side, side, 3) for a in out]
        return out

    def checked_images(self, keys: np.ndarray) -> list[np.ndarray]:
        """`images(keys)`, each encoded image's header checked first (pipeline/image_check.py), so that
        DALI is never handed bytes that could end the process; ShardError names the shard and the key.
        A key is checked once per reader (the maps never change under it): a training run's later epochs
        skip the checks."""
        views = self.images(keys)
        if self.index.encoding == "raw":
            return views
        if self._checked is None:
            self._checked = np.zeros(self.index.num_samples, bool)
        for i in np.flatnonzero(~self._checked[keys]).tolist():
            if jpeg_size(views[i]) is not None:  # the common case first, ~1 us: a JPEG whose header parses
                continue
            problem = header_problem(views[i])  # why not, or None for another format DALI takes (PNG, ...)
            if problem is not None:
                raise ShardError(f"{self.member(int(keys[i]))} does not decode ({problem})")
        self._checked[keys] = True
        return views

    def member(self, key: int) -> str:
        """Sample `key`'s image member, for messages: `<shard>.tar: sample 000000123.jpg`."""
        return f"{self.sample(key)}.{EXTENSIONS[self.index.encoding]}"

    def sample(self, key: int) -> str:
        """Where sample `key` lives, for messages: `<shard>.tar: sample 000000123` (in a union, its own
        directory's tar and key)."""
        return f"{self.index.paths[int(self.index.shard_of[key])]}: sample {self.index.local_key(key):09d}"

    def step_labels(self, global_keys: np.ndarray, part: slice) -> tuple[np.ndarray, np.ndarray]:
        """(labels of `global_keys[part]` (a rank's), labels of all `global_keys` (its step's global batch)):
        Batch.labels and .global_labels: one gather from the labels table."""
        everyone = self.labels(global_keys)
        return everyone[part].copy(), everyone

    def labels(self, keys: np.ndarray) -> np.ndarray:
        """int64 [len(keys)]: each sample's label, a class of the manifest (of the union's classes): one
        gather from the labels table, checked when the index was opened."""
        return self.index.label_table[keys].astype(np.int64)
