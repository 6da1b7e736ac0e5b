"""`--exclude-keys FILE`: the source images a conversion leaves out, read and checked against the source.

The file holds one source image a line, as the source names it: the record key of a .rec (a whole number,
the key in its .idx) or the image's path under a folder source's root (`identity/0001.jpg`). The syntax is
the exclusion list's (convert/class_exclusion.py: blank and '#' lines skipped, spaces around a line
ignored, a key listed twice counted once). `python -m evaluate audit` writes such a file (its outliers and
duplicates); a user edits it after review. An image the source does not have is an error naming the file
and the line. A class whose every image is excluded is left out like an excluded class.
"""
from __future__ import annotations

import re

import numpy as np

from convert.class_exclusion import ExclusionError, ExclusionList, read_exclusion_list
from convert.manifest import KeyExclusionRecord

read_key_list = read_exclusion_list  # the same syntax: one entry a line


def item_names(source) -> list:
    """Each source item's name as an exclusion file writes it: a .rec's record key, a folder's relative path."""
    if source.kind == "folder":
        return list(source.paths)
    return [str(k) for k in source.keys]


def resolve(keys: ExclusionList, source) -> np.ndarray:
    """The source item indices (int64, sorted) that `keys` names."""
    if source.kind == "folder":
        index = {p: i for i, p in enumerate(source.paths)}
    else:
        index = {int(k): i for i, k in enumerate(source.keys)}
    found = []
    for number, name in keys.entries:
        if source.kind == "rec":
            if not re.fullmatch(r"[0-9]+", name):
                raise ExclusionError(f"{keys.path}: line {number}: expected a record key of the .rec (a whole "
                                     f"number >= 0), found {name!r}")
            name = int(name)
        if name not in index:
            where = source.rec if source.kind == "rec" else source.root
            raise ExclusionError(f"{keys.path}: line {number}: {name!r} is no image of {where}")
        found.append(index[name])
    return np.unique(np.asarray(found, dtype=np.int64))


def record(keys: ExclusionList, source, excluded: np.ndarray) -> KeyExclusionRecord:
    """The manifest's account: the file, its sha256 and the source images it left out."""
    names = source.paths if source.kind == "folder" else source.keys  # only the excluded ones made text
    return KeyExclusionRecord(file=keys.path, sha256=keys.sha256, num_samples=int(excluded.size),
                              keys=tuple(str(names[int(i)]) for i in excluded))
