"""What an output folder already holds before a conversion writes it: an earlier run of the same conversion
to resume or to find finished, or files of another dataset to refuse unless --overwrite.

A conversion's progress lives beside its shards: OUT/.convert-state.json (the shards written so far) and
.convert-validated.npz (the first pass's results), both removed once manifest.json is written. The manifest
carries, in `extra`, the fingerprint of the conversion (source and options) and a checksum of its own
content, so that a rerun tells its own finished output from another dataset's, and from a manifest edited
by hand since, which it writes again rather than trust.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import zipfile
from dataclasses import replace
from typing import Optional

from common.errors import InputError
from common.files import sha256_file
from convert.labels_table import LABELS_NAME
from convert.manifest import MANIFEST_NAME, Manifest, ManifestError, ShardRecord, StaleManifestError, TableRecord
from convert.validation import Validated

STATE_NAME = ".convert-state.json"
VALIDATED_NAME = ".convert-validated.npz"
CONTENT_KEY = "content_sha256"  # in the manifest's extra: the sha256 of the rest of the manifest


class OutputError(InputError, ValueError):
    """An output path that cannot receive the shards; the message names it."""


def _as_recorded(out: str, rec) -> bool:
    """Whether file `rec.name` is in `out` with the record's size and sha256."""
    path = os.path.join(out, rec.name)
    return os.path.isfile(path) and os.path.getsize(path) == rec.bytes and sha256_file(path) == rec.sha256


def complete(out: str, rec: ShardRecord) -> bool:
    """Whether shard `rec` is in `out` as its record says: tar and index there, its size and sha256."""
    return os.path.isfile(os.path.join(out, rec.index_name)) and _as_recorded(out, rec)


def table_complete(out: str, rec: TableRecord) -> bool:
    """Whether the table `rec` (the labels table) is in `out` as its record says."""
    return _as_recorded(out, rec)


def _remove_shards(out: str, records, table: Optional[TableRecord] = None) -> None:
    names = [name for rec in records for name in (rec.name, rec.index_name)]
    for name in names + ([table.name] if table is not None else []):
        path = os.path.join(out, name)
        if os.path.exists(path):
            os.remove(path)


def _warn(message: str) -> None:
    print(f"convert: warning: {message}", file=sys.stderr)


def _stray_shards(out: str, prefix: str) -> list:
    """Files in `out` named as this conversion names its shards (`<prefix>-NNNNNN.tar` or `.idx`) or its
    labels table."""
    pattern = re.compile(re.escape(prefix) + r"-[0-9]{6}\.(tar|idx)")
    return sorted(e.name for e in os.scandir(out) if pattern.fullmatch(e.name) or e.name == LABELS_NAME)


def previous_records(out: str, fingerprint: dict, overwrite: bool, prefix: str) -> dict:
    """Shard records of an earlier run of the same conversion in `out`; clears another conversion's files.

    Shard files that neither this conversion's manifest nor its state accounts for (another tool's, or a
    copy) would be overwritten: refused unless `overwrite`, which removes them."""
    from_manifest = _manifest_records(out, fingerprint, overwrite)
    from_state = _state_records(out, fingerprint, overwrite)
    if from_manifest is None and from_state is None:  # `out` holds no manifest or state of this very conversion
        _clear_stray_shards(out, prefix, overwrite)
    return {**(from_manifest or {}), **(from_state or {})}


def _manifest_records(out: str, fingerprint: dict, overwrite: bool) -> Optional[dict]:
    """The shard records of `out`'s manifest when this very conversion wrote it; None when there is none or
    another one (refused unless `overwrite`, which removes it and its files)."""
    manifest_path = os.path.join(out, MANIFEST_NAME)
    if not os.path.exists(manifest_path):
        return None
    try:
        old = Manifest.load(out)
    except StaleManifestError:
        if not overwrite:
            raise  # it says to convert again with --overwrite
        old = None
    except ManifestError:
        old = None
    if old is not None and old.extra.get("fingerprint") == fingerprint:
        return {r.name: r for r in old.shards}
    if not overwrite:
        if old is not None and _same_source(old.extra.get("fingerprint"), fingerprint):
            raise OutputError(f"{out}: holds a conversion of the same source with other options "
                              f"({_changed(old.extra['fingerprint'], fingerprint)}); pass --overwrite to "
                              f"replace it, or convert into another folder")
        what = f"source {old.source.get('path')}" if old is not None else "an unreadable manifest"
        raise OutputError(f"{out}: holds another dataset's manifest ({what}); pass --overwrite to replace it")
    os.remove(manifest_path)
    if old is not None:
        _remove_shards(out, old.shards, old.labels)
    return None


def _state_records(out: str, fingerprint: dict, overwrite: bool) -> Optional[dict]:
    """The shard records of an unfinished run of this very conversion (its state file); None when there is
    none or another one (refused unless `overwrite` or it wrote no shard; then removed with its files)."""
    state_path = os.path.join(out, STATE_NAME)
    if not os.path.exists(state_path):
        return None
    state, shards = _load_state(state_path, overwrite)
    if state.get("fingerprint") == fingerprint:
        return shards
    if shards and not overwrite:
        if _same_source(state.get("fingerprint"), fingerprint):
            raise OutputError(f"{out}: holds an unfinished conversion of the same source with other options "
                              f"({_changed(state['fingerprint'], fingerprint)}); rerun it with its own "
                              f"options to finish it, or pass --overwrite to replace it")
        raise OutputError(f"{out}: holds an unfinished conversion of another source; pass --overwrite to replace it")
    _remove_shards(out, shards.values())
    os.remove(state_path)
    if os.path.exists(os.path.join(out, VALIDATED_NAME)):
        os.remove(os.path.join(out, VALIDATED_NAME))
    return None


def _clear_stray_shards(out: str, prefix: str, overwrite: bool) -> None:
    """Remove the files named as this conversion's shards (or its labels table) that no run of it wrote;
    refused unless `overwrite`."""
    stray = _stray_shards(out, prefix)
    if stray and not overwrite:
        shown = ", ".join(stray[:3]) + (f" and {len(stray) - 3} more" if len(stray) > 3 else "")
        raise OutputError(f"{out}: holds shard files that no conversion of this source wrote ({shown}); "
                          f"they would be overwritten; pass --overwrite to replace them")
    for name in stray:
        os.remove(os.path.join(out, name))


def _same_source(old, fingerprint: dict) -> bool:
    return isinstance(old, dict) and old.get("source") == fingerprint["source"]


def _changed(old: dict, fingerprint: dict) -> str:
    """The options that differ between two fingerprints of one source (a fingerprint is its source and its
    options, so some do), for the message that refuses."""
    before, now = old.get("options") or {}, fingerprint["options"]
    keys = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    return "changed: " + ", ".join(f"{k} {before.get(k)!r} -> {now.get(k)!r}" for k in keys)


def _load_state(path: str, overwrite: bool) -> tuple:
    """(state, {shard name: ShardRecord}) of an unfinished conversion; an unreadable state file (edited by hand:
    every write is atomic) is refused unless `overwrite`, which starts again."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            state = json.load(f)
        return state, {name: ShardRecord(**r) for name, r in state["shards"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSON, a missing key, a wrong type
        if not overwrite:
            raise OutputError(f"{path}: unreadable state of an unfinished conversion ({type(e).__name__}: {e}); "
                              f"pass --overwrite to start again") from None
        return {}, {}


def _content_sha256(manifest: Manifest) -> str:
    """The sha256 of the manifest's content, less the checksum itself (JSON, sorted keys, as it is saved)."""
    d = manifest.to_dict()
    d["extra"] = {k: v for k, v in d["extra"].items() if k != CONTENT_KEY}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode("utf-8")).hexdigest()


def sealed(manifest: Manifest) -> Manifest:
    """The manifest with the checksum of its content in extra, by which a rerun tells an edited one."""
    return replace(manifest, extra={**manifest.extra, CONTENT_KEY: _content_sha256(manifest)})


def finished(out: str, fingerprint: dict) -> Optional[Manifest]:
    """The manifest of this very conversion when it already completed, unedited, and every shard and its
    labels table still check out."""
    if not os.path.exists(os.path.join(out, MANIFEST_NAME)):
        return None
    manifest = Manifest.load(out)
    if manifest.extra.get("fingerprint") != fingerprint or not all(complete(out, r) for r in manifest.shards):
        return None
    if not table_complete(out, manifest.labels):
        return None
    # Every converter that wrote a labels table (which a manifest must list to load) also wrote this
    # checksum: one that is absent or differs means the manifest was edited.
    if manifest.extra.get(CONTENT_KEY) != _content_sha256(manifest):
        _warn(f"{os.path.join(out, MANIFEST_NAME)}: was edited since this conversion wrote it; it says "
              f"{manifest.num_samples} samples and {manifest.num_classes} classes; writing it again from the source")
        return None
    return manifest


def load_validated(path: str) -> Optional[Validated]:
    """The first pass's results of an earlier run, or None to validate again (absent or unreadable: a cache)."""
    if not os.path.exists(path):
        return None
    try:
        return Validated.load(path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
