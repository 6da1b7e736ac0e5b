"""Re-read a shard directory and list every way it disagrees with its manifest (checksums, counts, index, labels,
labels table)."""
from __future__ import annotations

import os
import tarfile
from array import array
from typing import Union

import numpy as np

from common.files import sha256_file
from convert.labels_table import labels_problem, read_labels
from convert.manifest import Manifest, ManifestError, ShardRecord
from convert.shard_writer import INDEX_VERSION, key_name


def _tar_members(path: str) -> list:
    """(name, data offset, size, data) of each regular member, in tar order; data only for .cls members."""
    members = []
    with tarfile.open(path, "r:") as tar:
        for m in tar:
            if not m.isreg():
                raise ValueError(f"member {m.name!r} is not a regular file")
            data = tar.extractfile(m).read() if m.name.endswith(".cls") else None
            members.append((m.name, m.offset_data, m.size, data))
    return members


def _file_problems(where: str, path: str, rec) -> list:
    """A listed file that exists against its manifest record (`bytes`, `sha256`): size, checksum."""
    problems = []
    size = os.path.getsize(path)
    if size != rec.bytes:
        problems.append(f"{where}: {size} bytes, manifest says {rec.bytes}")
    digest = sha256_file(path)
    if digest != rec.sha256:
        problems.append(f"{where}: sha256 {digest}, manifest says {rec.sha256}")
    return problems


def _check_shard(directory: str, manifest: Manifest, rec: ShardRecord, first_key: int, cls_labels: _Labels) -> list:
    """The shard's problems; adds the key and label of every `.cls` member that parses to `cls_labels`."""
    tar_path = os.path.join(directory, rec.name)
    idx_path = os.path.join(directory, rec.index_name)
    where = f"shard {rec.name}"
    if not os.path.isfile(tar_path):
        return [f"{where}: missing"]
    problems = _file_problems(where, tar_path, rec)
    try:
        members = _tar_members(tar_path)
    except (tarfile.TarError, ValueError, OSError) as e:
        return problems + [f"{where}: unreadable tar ({e})"]
    samples: dict = {}
    for name, offset, msize, data in members:
        key, _, ext = name.partition(".")
        samples.setdefault(key, []).append((ext, offset, msize, name, data))
    if len(samples) != rec.samples:
        problems.append(f"{where}: {len(samples)} samples, manifest says {rec.samples}")
    expected_keys = [key_name(first_key + i) for i in range(rec.samples)]
    if list(samples) != expected_keys[: len(samples)] or len(samples) != rec.samples:
        problems.append(f"{where}: keys are not {expected_keys[0]}..{expected_keys[-1]} in order")
    raw_size = manifest.image_size * manifest.image_size * 3
    for key, parts in samples.items():
        exts = sorted(p[0] for p in parts)
        if exts != sorted(["cls", manifest.extension]):
            problems.append(f"{where}: sample {key} has members {exts}, expected cls and {manifest.extension}")
            continue
        for ext, _, msize, _, data in parts:
            if ext == "cls":
                text = data.decode("ascii", "replace")
                if text.isdigit() and key.isdigit():
                    cls_labels.keys.append(int(key))
                    cls_labels.labels.append(int(text))
                if not text.isdigit() or not 0 <= int(text) < manifest.num_classes:
                    problems.append(f"{where}: sample {key} label {text!r} outside 0..{manifest.num_classes - 1}")
            elif manifest.encoding == "raw" and msize != raw_size:
                problems.append(f"{where}: sample {key} raw image of {msize} bytes, expected {raw_size}")
    problems += _check_index(idx_path, rec, samples)
    return problems


def _check_index(idx_path: str, rec: ShardRecord, samples: dict) -> list:
    where = f"index {rec.index_name}"
    if not os.path.isfile(idx_path):
        return [f"{where}: missing"]
    with open(idx_path, "r", encoding="ascii", errors="replace") as f:
        lines = f.read().splitlines()
    expected_head = f"{INDEX_VERSION} {len(samples)}"
    if not lines or lines[0] != expected_head:
        return [f"{where}: first line {lines[0] if lines else ''!r}, expected {expected_head!r}"]
    problems = []
    if len(lines) - 1 != len(samples):
        problems.append(f"{where}: {len(lines) - 1} sample lines for {len(samples)} samples in the tar")
    for lineno, (line, parts) in enumerate(zip(lines[1:], samples.values()), 2):
        actual = " ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name, _ in parts)
        if line != actual:
            problems.append(f"{where}:{lineno}: {line!r} but the tar holds {actual!r}")
    return problems


def verify(out: Union[str, os.PathLike]) -> list:
    """Every problem found in the shard directory `out`, one string each naming the shard; [] when all is well."""
    out = os.fspath(out)
    try:
        manifest = Manifest.load(out)
    except ManifestError as e:
        return [str(e)]
    problems, cls_labels = [], _Labels()
    for rec, first_key in zip(manifest.shards, manifest.first_keys()):
        problems += _check_shard(out, manifest, rec, first_key, cls_labels)
    return problems + _check_labels_table(out, manifest, cls_labels)


class _Labels:
    """The parsed `.cls` members, key and label, 16 bytes a sample (a dict of millions of ints would take ~90)."""

    def __init__(self) -> None:
        self.keys, self.labels = array("q"), array("q")


def _check_labels_table(directory: str, manifest: Manifest, cls_labels: _Labels) -> list:
    """The labels table against its record, its shape, dtype and range, and the `.cls` members' labels."""
    rec = manifest.labels
    path = os.path.join(directory, rec.name)
    where = f"labels table {rec.name}"
    if not os.path.isfile(path):
        return [f"{where}: missing"]
    problems = _file_problems(where, path, rec)
    try:
        table = read_labels(path)
    except (OSError, ValueError) as e:
        return problems + [f"{where}: unreadable ({e})"]
    problem = labels_problem(table, manifest.num_samples, manifest.num_classes)
    if problem is not None:
        return problems + [f"{where}: {problem}"]
    keys = np.frombuffer(cls_labels.keys, np.int64)
    parsed = np.frombuffer(cls_labels.labels, np.int64)
    keys_ok = keys < len(table)
    keys, parsed = keys[keys_ok], parsed[keys_ok]
    differ = np.flatnonzero(table[keys] != parsed)
    if differ.size:
        k = int(keys[differ[0]])
        problems.append(f"{where}: row {k} holds label {int(table[k])}, sample {key_name(k)}.cls holds "
                        f"{int(parsed[differ[0]])} ({differ.size} rows differ from their .cls members)")
    return problems
