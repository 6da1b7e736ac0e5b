"""Conversion sources: an insightface/im2rec .rec, or one sub-folder of images per identity.

A source is a picklable list of items; `read(i)` returns (source label, encoded image bytes), `image(i)` the
encoded image alone (for the writing pass, after the validation pass checked the labels; a view of the mapped
file where it can be) and `where(i)` names the item in error messages. Worker processes reopen files lazily.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from typing import Optional

from common.errors import InputError
from convert.rec_layout import image_keys, insightface_image_end
from convert.recordio import RecordIOError, RecordReader, split, unpack

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class SourceError(InputError, ValueError):
    """A source that cannot be converted; the message names the file or folder."""


def printable(path: str) -> str:
    """`path` with the bytes that are no UTF-8 shown as \\xNN escapes, so that a message naming it can be printed."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _check_name(folder: str, name: str) -> None:
    """Refuse a file or folder name that is no UTF-8: it could be neither written into manifest.json (class_map,
    skipped) nor printed in an error message."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise SourceError(f"{printable(os.path.join(folder, name))}: name is not valid UTF-8 (shown with \\xNN "
                          "escapes); rename it") from None


class RecSource:
    """Images of a .rec: keys 1..header.label[0]-1 when record 0 is insightface's header, else every record."""

    kind = "rec"

    def __init__(self, src: str) -> None:
        src = os.path.abspath(os.fspath(src))
        if os.path.isdir(src):
            rec, idx = os.path.join(src, "train.rec"), os.path.join(src, "train.idx")
            if not os.path.isfile(rec):
                raise SourceError(f"{src}: no train.rec in this folder")
        elif os.path.isfile(src):
            rec, idx = src, os.path.splitext(src)[0] + ".idx"
        else:
            raise SourceError(f"{src}: no such .rec file or folder")
        self.rec = rec
        self.idx: Optional[str] = idx if os.path.isfile(idx) else None
        reader = RecordReader(self.rec, self.idx)
        try:
            self.keys = image_keys(reader)
            self.layout = "im2rec" if insightface_image_end(reader) is None else "insightface"
            # Parsed once: each worker process gets it with the source (8 bytes a record) instead of parsing
            # the .idx again, which took ~40 bytes a record at its peak, in every worker.
            self._index = reader.index
        finally:
            reader.close()
        if len(self.keys) == 0:
            raise SourceError(f"{self.rec}: holds no image records")
        self._reader: Optional[RecordReader] = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    def __len__(self) -> int:
        return len(self.keys)

    def where(self, i: int) -> str:
        return f"{self.rec} key {int(self.keys[i])}"

    def _records(self) -> RecordReader:
        """This process's reader of the .rec, opened on first use (workers get the source without it)."""
        if self._reader is None:
            # Scanning a .rec without .idx was already warned about once, in __init__.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._reader = RecordReader(self.rec, self.idx, index=self._index)
        return self._reader

    def read(self, i: int) -> tuple:
        key = self.keys[i]
        header, payload = unpack(self._records().read(key))
        label = header.label if header.flag == 0 else (header.label[0] if header.label else float("nan"))
        if not (label == label and float(label).is_integer() and label >= 0):
            raise SourceError(f"{self.where(i)}: label {header.label} is not a non-negative integer")
        return int(label), payload

    def image(self, i: int) -> memoryview:
        """Item i's encoded image without its label check (the validation pass made it), as a view of the
        mapped .rec where its record is one part: what the shard writer copies into a shard."""
        try:
            return split(self._records().view(self.keys[i]))[1]
        except RecordIOError:
            return memoryview(self.read(i)[1])  # read() names the problem

    def describe(self) -> dict:
        st = os.stat(self.rec)
        return {"kind": "rec", "path": self.rec, "layout": self.layout, "images": len(self.keys),
                "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}

    def folder_name(self, label) -> str:
        return str(label)


class FolderSource:
    """One sub-folder per identity (classes in sorted folder-name order), images sorted by file name."""

    kind = "folder"

    def __init__(self, src: str) -> None:
        self.root = os.path.abspath(os.fspath(src))
        if not os.path.isdir(self.root):
            raise SourceError(f"{self.root}: no such source folder")
        self.classes = sorted(
            e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith(".")
        )
        for name in self.classes:
            _check_name(self.root, name)
        if not self.classes:
            raise SourceError(f"{self.root}: source folder is empty (expected one sub-folder per identity)")
        self.paths: list = []
        self.labels: list = []
        for label, name in enumerate(self.classes):
            folder = os.path.join(self.root, name)
            files = sorted(
                e.name for e in os.scandir(folder)
                if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
            )
            for f in files:
                _check_name(folder, f)
            if not files:
                raise SourceError(f"{folder}: identity folder has no images ({'/'.join(IMAGE_EXTENSIONS)})")
            self.paths += [os.path.join(name, f) for f in files]
            self.labels += [label] * len(files)

    def __len__(self) -> int:
        return len(self.paths)

    def where(self, i: int) -> str:
        return os.path.join(self.root, self.paths[i])

    def read(self, i: int) -> tuple:
        with open(os.path.join(self.root, self.paths[i]), "rb") as f:
            return self.labels[i], f.read()

    def image(self, i: int) -> bytes:
        """Item i's encoded image (the file's bytes)."""
        return self.read(i)[1]

    def describe(self) -> dict:
        listing = hashlib.sha256()
        for p in self.paths:
            st = os.stat(os.path.join(self.root, p))
            listing.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {"kind": "folder", "path": self.root, "images": len(self.paths), "classes": len(self.classes),
                "listing_sha256": listing.hexdigest()}

    def folder_name(self, label: int) -> str:
        return self.classes[label]
