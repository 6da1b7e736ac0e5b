"""`--merge-classes FILE`: source classes a conversion relabels as another (one person under two labels).

One merge a line, `FROM -> TO`, each side a source class as the source names it (a .rec's label, an
identity folder's name); blank and '#' lines skipped, spaces around each side ignored. Every image of FROM
takes TO's label; then labels are renumbered 0..C-1 as always (the manifest's class_map gives each new
label's source class, and its `merge` record lists each FROM, TO and the label they now share).
`python -m evaluate audit` writes such a file from the conflicts it finds, each group of classes merged
into its first; a user edits it after review.

Refused, naming the file and the line: a class the source lacks, a class merged into itself or into two
classes, a chain (TO merged in turn into another: write each FROM -> the final class), and a side that an
--exclude-classes list leaves out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from convert.class_exclusion import ExclusionError, ExclusionList, read_decision_lines, resolve as resolve_classes
from convert.manifest import MergeRecord

ARROW = "->"


@dataclass(frozen=True)
class MergeList:
    path: str
    sha256: str
    entries: tuple  # of (line number, FROM as written, TO as written)


def read_merge_list(path) -> MergeList:
    path, sha256, lines = read_decision_lines(path, "merge list")
    entries = []
    for number, line in lines:
        parts = line.split(ARROW)
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ExclusionError(f"{path}: line {number}: expected 'FROM {ARROW} TO' (two source classes), "
                                 f"found {line!r}")
        entries.append((number, parts[0].strip(), parts[1].strip()))
    return MergeList(path, sha256, tuple(entries))


def _one(merge: MergeList, number: int, name: str, source, labels) -> int:
    """The source label of class `name` (line `number`), checked by the exclusion list's rules."""
    return int(resolve_classes(ExclusionList(merge.path, merge.sha256, ((number, name),)), source, labels)[0])


def resolve(merge: MergeList, source, labels: Optional[np.ndarray] = None,
            excluded: Optional[np.ndarray] = None) -> dict:
    """{FROM source label: TO source label} (folder indices for a folder source), checked."""
    if labels is not None:  # the classes present, once: each side's check would otherwise sort every label again
        labels = np.unique(labels[labels >= 0])
    mapping, line_of = {}, {}
    for number, a, b in merge.entries:
        frm, to = _one(merge, number, a, source, labels), _one(merge, number, b, source, labels)
        if frm == to:
            raise ExclusionError(f"{merge.path}: line {number}: {a!r} is merged into itself")
        if frm in mapping and mapping[frm] != to:
            raise ExclusionError(f"{merge.path}: line {number}: {a!r} is already merged into another class "
                                 f"(line {line_of[frm]})")
        if excluded is not None and (np.isin(frm, excluded) or np.isin(to, excluded)):
            raise ExclusionError(f"{merge.path}: line {number}: {a!r} -> {b!r} names a class that "
                                 f"--exclude-classes leaves out")
        mapping[frm], line_of[frm] = to, number
    for frm, to in mapping.items():
        if to in mapping:
            raise ExclusionError(f"{merge.path}: line {line_of[frm]}: a chain: its target is merged in turn "
                                 f"(line {line_of[to]}); merge each class into the final one")
    return mapping


def apply(labels: np.ndarray, mapping: dict) -> np.ndarray:
    """Source labels with every FROM replaced by its TO (a copy)."""
    out = np.array(labels, copy=True)
    for frm, to in mapping.items():
        out[labels == frm] = to
    return out


def record(merge: MergeList, source, mapping: dict, contiguous_of: dict, samples: int) -> MergeRecord:
    """The manifest's account: the file, its sha256, each (FROM, TO, new label) and the images relabelled.
    contiguous_of: {source label: new contiguous label}."""
    name = (lambda c: source.classes[c]) if source.kind == "folder" else int
    merged = tuple((name(f), name(t), int(contiguous_of[t])) for f, t in sorted(mapping.items()))
    return MergeRecord(file=merge.path, sha256=merge.sha256, merged=merged, num_samples=int(samples))
