"""The shard set's manifest.json: typed, validated on load, written last and atomically."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Union

from common.errors import InputError
from common.files import write_json_atomic

FORMAT = "adadistill-webdataset-shards"
VERSION = 1
MANIFEST_NAME = "manifest.json"
# Member extension of each encoding (DESIGN.md, "Shards"), and the way back.
EXTENSIONS = {"jpeg": "jpg", "raw": "raw"}  # encoding -> member extension
ENCODINGS = {ext: encoding for encoding, ext in EXTENSIONS.items()}  # member extension -> encoding


class ManifestError(InputError, ValueError):
    """A manifest that is missing, unreadable, or holds impossible values; the message names the file and key."""


class StaleManifestError(ManifestError):
    """A manifest an older converter wrote (no labels table): the shard set must be converted again."""


def _check_sha256(what: str, sha256: str) -> None:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ManifestError(f"{what}: sha256 must be 64 lowercase hex digits, found {sha256!r}")


@dataclass(frozen=True)
class ShardRecord:
    """One tar shard: file name (relative to the manifest), sample count, byte size, sha256 hex digest."""

    name: str
    samples: int
    bytes: int
    sha256: str

    def __post_init__(self) -> None:
        if not self.name.endswith(".tar") or "/" in self.name:
            raise ManifestError(f"shard name must be a plain '<name>.tar', found {self.name!r}")
        if self.samples < 1:
            raise ManifestError(f"shard {self.name}: samples must be >= 1, found {self.samples}")
        if self.bytes < 1024:
            raise ManifestError(f"shard {self.name}: a tar holds at least 1024 bytes, found {self.bytes}")
        _check_sha256(f"shard {self.name}", self.sha256)

    @property
    def index_name(self) -> str:
        """The DALI index file beside the tar."""
        return self.name[: -len(".tar")] + ".idx"


@dataclass(frozen=True)
class TableRecord:
    """A per-sample table beside the shards (the labels table): file name, byte size, sha256 hex digest."""

    name: str
    bytes: int
    sha256: str

    def __post_init__(self) -> None:
        if not self.name.endswith(".npy") or "/" in self.name:
            raise ManifestError(f"table name must be a plain '<name>.npy', found {self.name!r}")
        if self.bytes < 1:
            raise ManifestError(f"table {self.name}: bytes must be >= 1, found {self.bytes}")
        _check_sha256(f"table {self.name}", self.sha256)


@dataclass(frozen=True)
class ExclusionRecord:
    """The classes a conversion left out (`--exclude-classes FILE`): the list's path and the sha256 of its
    bytes, the source classes it named (.rec labels or folder names) and how many samples they held."""

    file: str
    sha256: str
    num_classes: int
    num_samples: int
    classes: tuple

    def __post_init__(self) -> None:
        _check_sha256(f"exclusion {self.file}", self.sha256)
        if self.num_classes != len(self.classes) or self.num_samples < 0:
            raise ManifestError(f"exclusion {self.file}: num_classes must count the {len(self.classes)} classes and "
                                f"num_samples be >= 0, found {self.num_classes} and {self.num_samples}")


@dataclass(frozen=True)
class KeyExclusionRecord:
    """The source images a conversion left out (`--exclude-keys FILE`): the list's path and sha256, and
    each image as the source names it (a .rec's record key, a folder source's relative path)."""

    file: str
    sha256: str
    num_samples: int
    keys: tuple

    def __post_init__(self) -> None:
        _check_sha256(f"key exclusion {self.file}", self.sha256)
        if self.num_samples != len(self.keys):
            raise ManifestError(f"key exclusion {self.file}: num_samples must count the {len(self.keys)} keys, "
                                f"found {self.num_samples}")


@dataclass(frozen=True)
class MergeRecord:
    """The source classes a conversion merged (`--merge-classes FILE`): the list's path and sha256, each
    merge as (FROM, TO, the contiguous label both now carry), and how many images changed label."""

    file: str
    sha256: str
    merged: tuple  # of (from source class, to source class, new label)
    num_samples: int

    def __post_init__(self) -> None:
        _check_sha256(f"merge {self.file}", self.sha256)
        if self.num_samples < 0 or any(len(m) != 3 for m in self.merged):
            raise ManifestError(f"merge {self.file}: expected (from, to, label) triples and num_samples >= 0")


def _before_labels_table(where: str, source: Any) -> str:
    """The error for a manifest without a labels table: its shard set predates labels.npy, which readers
    need (pipeline.ShardIndex gathers every label from it); the fix is the same conversion run again."""
    folder = os.path.dirname(where) if os.path.basename(where) == MANIFEST_NAME else where
    source = source if isinstance(source, Mapping) else {}
    command = (f"python -m convert {source['kind']} {source['path']} {folder or '.'}"
               if source.get("kind") in ("rec", "folder") and source.get("path") else
               f"python -m convert rec|folder SOURCE {folder or '.'}")
    return (f"{where}: lists no labels table: this shard set was converted before labels.npy existed; "
            f"convert it again ({command} --overwrite, with the options it was converted with)")


@dataclass(frozen=True)
class Manifest:
    """What a shard directory holds. Shard k holds keys sum(samples of shards < k) .. + samples - 1.

    class_map: the source's label (a number or a folder name) of each contiguous class 0..C-1, or
    None when the source's labels already are 0..C-1. skipped: source keys left out by --skip-corrupt.
    labels: the labels table (convert/labels_table.py: int32 [num_samples], row = global key, the same
    labels as the `.cls` members). A manifest without one (a shard set converted before the table existed)
    does not load: ManifestError says to convert the source again.
    exclusion: the source classes left out by --exclude-classes, or None when none were.
    key_exclusion: the source images left out by --exclude-keys; merge: the classes merged by
    --merge-classes (class_map says how the labels were renumbered); None when not used.
    """

    num_samples: int
    num_classes: int
    image_size: int
    encoding: str
    seed: int
    shards: tuple
    source: Mapping[str, Any]
    labels: TableRecord
    class_map: Optional[tuple] = None
    skipped: tuple = ()
    exclusion: Optional[ExclusionRecord] = None
    key_exclusion: Optional[KeyExclusionRecord] = None
    merge: Optional[MergeRecord] = None
    format: str = FORMAT
    version: int = VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format != FORMAT:
            raise ManifestError(f"manifest format must be {FORMAT!r}, found {self.format!r}")
        if self.version != VERSION:
            raise ManifestError(f"manifest version {VERSION} expected, found {self.version}")
        if self.encoding not in EXTENSIONS:
            raise ManifestError(f"manifest encoding must be one of {tuple(EXTENSIONS)}, found {self.encoding!r}")
        if self.num_classes < 1 or self.num_samples < 1 or self.image_size < 1:
            raise ManifestError(
                f"manifest needs num_samples, num_classes, image_size >= 1, found "
                f"{self.num_samples}, {self.num_classes}, {self.image_size}"
            )
        if not all(isinstance(s, ShardRecord) for s in self.shards) or not self.shards:
            raise ManifestError("manifest shards must be a non-empty sequence of ShardRecord")
        total = sum(s.samples for s in self.shards)
        if total != self.num_samples:
            raise ManifestError(f"manifest num_samples is {self.num_samples} but its shards hold {total}")
        names = [s.name for s in self.shards]
        if len(set(names)) != len(names):
            raise ManifestError("manifest lists a shard name twice")
        if self.class_map is not None and len(self.class_map) != self.num_classes:
            raise ManifestError(f"class_map has {len(self.class_map)} entries for {self.num_classes} classes")
        if not isinstance(self.labels, TableRecord):
            raise ManifestError(f"manifest labels must be a TableRecord, found {type(self.labels).__name__}")
        if self.exclusion is not None and not isinstance(self.exclusion, ExclusionRecord):
            raise ManifestError(f"manifest exclusion must be an ExclusionRecord or None, found "
                                f"{type(self.exclusion).__name__}")
        for name, kind in (("key_exclusion", KeyExclusionRecord), ("merge", MergeRecord)):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), kind):
                raise ManifestError(f"manifest {name} must be a {kind.__name__} or None, found "
                                    f"{type(getattr(self, name)).__name__}")

    @property
    def extension(self) -> str:
        """The image member's extension: 'jpg' or 'raw'."""
        return EXTENSIONS[self.encoding]

    def shard_paths(self, shards_dir: Union[str, os.PathLike]) -> list:
        return [os.path.join(os.fspath(shards_dir), s.name) for s in self.shards]

    def first_keys(self) -> list:
        """The first sample key of each shard."""
        keys, k = [], 0
        for s in self.shards:
            keys.append(k)
            k += s.samples
        return keys

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shards"] = [asdict(s) for s in self.shards]
        d["class_map"] = list(self.class_map) if self.class_map is not None else None
        d["skipped"] = list(self.skipped)
        if self.exclusion is None:
            del d["exclusion"]  # likewise: a conversion without --exclude-classes writes the manifest it always did
        else:
            d["exclusion"]["classes"] = list(self.exclusion.classes)
        for name in ("key_exclusion", "merge"):  # absent when unused, as exclusion
            if d[name] is None:
                del d[name]
        if self.key_exclusion is not None:
            d["key_exclusion"]["keys"] = list(self.key_exclusion.keys)
        if self.merge is not None:
            d["merge"]["merged"] = [list(m) for m in self.merge.merged]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "manifest") -> "Manifest":
        d = dict(d)
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ManifestError(f"{where}: unknown keys {unknown}")
        if d.get("labels") is None:
            raise StaleManifestError(_before_labels_table(where, d.get("source")))
        try:
            d["shards"] = tuple(ShardRecord(**s) for s in d["shards"])
            if d.get("class_map") is not None:
                d["class_map"] = tuple(d["class_map"])
            d["skipped"] = tuple(d.get("skipped", ()))
            d["labels"] = TableRecord(**d["labels"])
            if d.get("exclusion") is not None:
                d["exclusion"] = ExclusionRecord(**{**d["exclusion"], "classes": tuple(d["exclusion"]["classes"])})
            if d.get("key_exclusion") is not None:
                d["key_exclusion"] = KeyExclusionRecord(**{**d["key_exclusion"],
                                                           "keys": tuple(d["key_exclusion"]["keys"])})
            if d.get("merge") is not None:
                d["merge"] = MergeRecord(**{**d["merge"], "merged": tuple(tuple(m) for m in d["merge"]["merged"])})
            return cls(**d)
        except (TypeError, KeyError) as e:
            raise ManifestError(f"{where}: malformed manifest ({e})") from None
        except ManifestError as e:
            raise ManifestError(f"{where}: {e}") from None

    @classmethod
    def load(cls, shards_dir: Union[str, os.PathLike]) -> "Manifest":
        """Read `<shards_dir>/manifest.json` (or a manifest file path)."""
        path = os.fspath(shards_dir)
        if os.path.isdir(path):
            path = os.path.join(path, MANIFEST_NAME)
        if not os.path.isfile(path):
            raise ManifestError(f"{path}: no manifest (a shard directory without one holds no finished dataset)")
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ManifestError(f"{path}: unreadable manifest ({e})") from None
        return cls.from_dict(data, where=path)

    def save(self, shards_dir: Union[str, os.PathLike]) -> str:
        """Write manifest.json atomically (temp file, fsync, rename); returns its path."""
        path = os.path.join(os.fspath(shards_dir), MANIFEST_NAME)
        write_json_atomic(path, self.to_dict())
        return path
