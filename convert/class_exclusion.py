"""`--exclude-classes FILE`: the source classes a conversion leaves out, read and checked against the source.

The file holds one source class per line, as the source names it: the label of a .rec (a whole number), or
the identity folder's name of a folder source. Blank lines and lines starting with '#' are skipped;
surrounding spaces are ignored, and a class listed twice counts once. `python -m evaluate overlap
--write-exclusions` writes such a file from the manifest's class_map (our contiguous label -> the source's).

A class the source does not have is an error naming the file and the line: a typo would otherwise leave
the class in. A folder source's classes are known before any image is read, so that check comes first; a
.rec's labels sit in its records, so there it comes after the first pass.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from common.errors import InputError
from convert.manifest import ExclusionRecord


class ExclusionError(InputError, ValueError):
    """An exclusion list that cannot be read or names a class the source lacks; the message names the file
    and the line."""


@dataclass(frozen=True)
class ExclusionList:
    """The classes named by an exclusion file, with the line of each, and the sha256 of the file's bytes."""

    path: str
    sha256: str
    entries: tuple  # of (line number, class as written), each class once, in file order

    def __post_init__(self) -> None:
        if len(self.sha256) != 64:
            raise ValueError(f"{self.path}: sha256 must be 64 hex digits, found {self.sha256!r}")


def read_decision_lines(path, what: str) -> tuple:
    """(absolute path, sha256 of its bytes, [(line number, line stripped)] less blank and '#' lines) of a
    decision file (exclusion, key and merge lists share this syntax); ExclusionError naming the file when it
    cannot be read or is not UTF-8 text. what: the file's kind, for the error."""
    path = os.path.abspath(os.fspath(path))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ExclusionError(f"{path}: cannot read the {what} ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ExclusionError(f"{path}: the {what} is not UTF-8 text (byte {err.start})") from None
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)]
    return path, hashlib.sha256(data).hexdigest(), [(n, t) for n, t in lines if t and not t.startswith("#")]


def read_exclusion_list(path) -> ExclusionList:
    """Parse `path` (syntax only; `resolve` checks the classes against a source)."""
    path, sha256, lines = read_decision_lines(path, "exclusion list")
    entries, seen = [], set()
    for number, name in lines:
        if name not in seen:
            seen.add(name)
            entries.append((number, name))
    return ExclusionList(path, sha256, tuple(entries))


def _rec_label(excl: ExclusionList, number: int, name: str) -> int:
    if not re.fullmatch(r"[0-9]+", name):
        raise ExclusionError(f"{excl.path}: line {number}: expected a class label of the .rec (a whole number "
                             f">= 0), found {name!r}")
    return int(name)


def resolve(excl: ExclusionList, source, labels: Optional[np.ndarray] = None) -> np.ndarray:
    """The source labels (int64, sorted) that `excl` names: .rec labels, or a folder source's folder indices.

    labels: the labels of the source's readable images (a .rec's, from the first pass); not needed for a
    folder source, whose class names are its folder names.
    """
    if source.kind == "folder":
        index = {name: i for i, name in enumerate(source.classes)}
        found = []
        for number, name in excl.entries:
            if name not in index:
                raise ExclusionError(f"{excl.path}: line {number}: {name!r} is no identity folder of {source.root}")
            found.append(index[name])
        return np.unique(np.asarray(found, dtype=np.int64))
    if labels is None:
        raise ValueError("resolve: a .rec source needs the labels of its images")
    present = np.unique(labels[labels >= 0])
    numbers = [number for number, _ in excl.entries]
    wanted = np.asarray([_rec_label(excl, number, name) for number, name in excl.entries], dtype=np.int64)
    missing = np.flatnonzero(~np.isin(wanted, present))  # one pass for the whole list
    if missing.size:
        number, label = numbers[missing[0]], int(wanted[missing[0]])
        raise ExclusionError(f"{excl.path}: line {number}: {label} is no label of the readable images of "
                             f"{source.rec} (its labels run {int(present[0])}..{int(present[-1])}, "
                             f"{len(present)} classes)")
    return np.unique(wanted)


def record(excl: ExclusionList, source, excluded: np.ndarray, samples: int) -> ExclusionRecord:
    """The manifest's account of the exclusion: the list's file and sha256, and what it left out."""
    if source.kind == "folder":
        classes = tuple(source.classes[int(i)] for i in excluded)
    else:
        classes = tuple(int(i) for i in excluded)
    return ExclusionRecord(file=excl.path, sha256=excl.sha256, num_classes=len(classes), num_samples=int(samples),
                           classes=classes)
