"""Convert a source (.rec or identity folders) into shuffled, indexed tar shards plus manifest.json.

Two passes: `validation` decodes every image once (in parallel) and yields labels; then the
samples, in a permutation drawn from the seed, are written shard by shard, in order. Progress is
kept in OUT/.convert-state.json (and the validation in .convert-validated.npz), so a second run of
the same command skips every shard whose checksum matches and writes the same bytes for the rest.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from tqdm import tqdm

from convert.files import remove_stale_temporaries, sha256_file, write_json_atomic
from convert.image_check import CorruptImageError
from convert.manifest import EXTENSIONS, MANIFEST_NAME, Manifest, ManifestError, ShardRecord
from convert.shard_jobs import ShardJob, run_jobs
from convert.sources import FolderSource, RecSource, SourceError
from convert.validation import Validated, validate_source

STATE_NAME = ".convert-state.json"
VALIDATED_NAME = ".convert-validated.npz"
TARGET_SHARD_BYTES = 384 * 2**20  # DESIGN.md: shards of about 256-512 MB


class OutputError(ValueError):
    """An output path that cannot receive the shards; the message names it."""


@dataclass(frozen=True)
class ConvertOptions:
    samples_per_shard: Optional[int] = None  # None: about TARGET_SHARD_BYTES per shard
    seed: int = 0
    workers: Optional[int] = None  # None: all cores
    encoding: str = "jpeg"
    image_size: int = 112
    resize: bool = False  # resize images that are not image_size x image_size (else they are an error)
    skip_corrupt: bool = False
    overwrite: bool = False
    prefix: str = "train"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.encoding not in EXTENSIONS:
            raise ValueError(f"encoding must be one of {sorted(EXTENSIONS)}, found {self.encoding!r}")
        if self.samples_per_shard is not None and self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, found {self.samples_per_shard}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be >= 1, found {self.workers}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, found {self.image_size}")
        if not self.prefix or "/" in self.prefix or "." in self.prefix:
            raise ValueError(f"prefix must be a plain name without '/' or '.', found {self.prefix!r}")

    def affecting_output(self) -> dict:
        """The options that change the shards' bytes (workers, progress, overwrite do not; skip_corrupt
        does not either: with a corrupt image and without it, no shard is written)."""
        d = asdict(self)
        for k in ("workers", "progress", "overwrite", "skip_corrupt"):
            d.pop(k)
        return d


def convert_rec(src, out, **options) -> Manifest:
    """Convert an insightface/im2rec .rec (a folder with train.rec/train.idx, or the .rec) into shards in `out`."""
    opts = ConvertOptions(**options)
    return _convert(RecSource(src), os.fspath(out), opts)


def convert_folder(src, out, **options) -> Manifest:
    """Convert one-sub-folder-per-identity images (classes in sorted folder order) into shards in `out`."""
    opts = ConvertOptions(**options)
    return _convert(FolderSource(src), os.fspath(out), opts)


def _complete(out: str, rec: ShardRecord) -> bool:
    tar = os.path.join(out, rec.name)
    return (
        os.path.isfile(tar) and os.path.isfile(os.path.join(out, rec.index_name))
        and os.path.getsize(tar) == rec.bytes and sha256_file(tar) == rec.sha256
    )


def _remove_shards(out: str, records) -> None:
    for rec in records:
        for name in (rec.name, rec.index_name):
            path = os.path.join(out, name)
            if os.path.exists(path):
                os.remove(path)


def _previous_records(out: str, fingerprint: dict, overwrite: bool) -> dict:
    """Shard records of an earlier run of the same conversion in `out`; clears another conversion's files."""
    manifest_path, state_path = os.path.join(out, MANIFEST_NAME), os.path.join(out, STATE_NAME)
    records: dict = {}
    if os.path.exists(manifest_path):
        try:
            old = Manifest.load(out)
        except ManifestError:
            old = None
        if old is not None and old.extra.get("fingerprint") == fingerprint:
            records = {r.name: r for r in old.shards}
        elif not overwrite:
            what = f"source {old.source.get('path')}" if old is not None else "an unreadable manifest"
            raise OutputError(f"{out}: holds another dataset's manifest ({what}); pass --overwrite to replace it")
        else:
            os.remove(manifest_path)
            if old is not None:
                _remove_shards(out, old.shards)
    if os.path.exists(state_path):
        with open(state_path, "r", encoding="utf-8") as f:
            state = json.load(f)
        if state.get("fingerprint") == fingerprint:
            records.update({name: ShardRecord(**r) for name, r in state["shards"].items()})
        elif state.get("shards") and not overwrite:
            raise OutputError(f"{out}: holds an unfinished conversion of another source; pass --overwrite to replace it")
        else:
            _remove_shards(out, [ShardRecord(**r) for r in state["shards"].values()])
            os.remove(state_path)
            if os.path.exists(os.path.join(out, VALIDATED_NAME)):
                os.remove(os.path.join(out, VALIDATED_NAME))
    return records


def _finished(out: str, fingerprint: dict) -> Optional[Manifest]:
    """The manifest of this very conversion when it already completed and every shard still checks out."""
    if not os.path.exists(os.path.join(out, MANIFEST_NAME)):
        return None
    manifest = Manifest.load(out)
    if manifest.extra.get("fingerprint") != fingerprint or not all(_complete(out, r) for r in manifest.shards):
        return None
    return manifest


def _class_labels(source, validated: Validated) -> tuple:
    """(contiguous label of each valid item, class_map or None), checking that no identity folder lost all images."""
    valid = np.flatnonzero(validated.ok)
    if len(valid) == 0:
        raise SourceError(f"{source.describe()['path']}: no readable images")
    classes, contiguous = np.unique(validated.labels[valid], return_inverse=True)
    if isinstance(source, FolderSource):
        present = set(classes.tolist())
        for label in range(len(source.classes)):
            if label not in present:
                raise SourceError(f"{os.path.join(source.root, source.classes[label])}: identity folder has no readable images")
        return contiguous, tuple(source.classes)
    if np.array_equal(classes, np.arange(len(classes))):
        return contiguous, None
    return contiguous, tuple(int(c) for c in classes)


def _convert(source, out: str, opts: ConvertOptions) -> Manifest:
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputError(f"{out}: output path is a file, expected a directory")
    os.makedirs(out, exist_ok=True)
    workers = opts.workers or os.cpu_count() or 1
    fingerprint = {"source": source.describe(), "options": opts.affecting_output()}
    records = _previous_records(out, fingerprint, opts.overwrite)
    remove_stale_temporaries(out)  # what a killed run was writing; its rerun writes the same files again
    finished = _finished(out, fingerprint)
    if finished is not None:
        return finished
    state_path, validated_path = os.path.join(out, STATE_NAME), os.path.join(out, VALIDATED_NAME)

    if records or (os.path.exists(state_path) and os.path.exists(validated_path)):
        validated = Validated.load(validated_path) if os.path.exists(validated_path) else None
    else:
        validated = None
    if validated is None or len(validated.ok) != len(source):
        validated = validate_source(source, opts.encoding, opts.image_size, opts.resize, workers, opts.progress)
        validated.save(validated_path)
    write_json_atomic(state_path, {"fingerprint": fingerprint, "shards": {n: asdict(r) for n, r in records.items()}})
    if validated.errors and not opts.skip_corrupt:
        index, message = validated.errors[0]
        raise CorruptImageError(f"{message} ({len(validated.errors)} corrupt images; --skip-corrupt leaves them out)")

    contiguous, class_map = _class_labels(source, validated)
    valid = np.flatnonzero(validated.ok)
    perm = np.random.default_rng(opts.seed).permutation(len(valid))
    order, labels = valid[perm], contiguous[perm]
    per_shard = opts.samples_per_shard
    if per_shard is None:
        mean_bytes = float(validated.nbytes[valid].mean()) + 1536  # two 512-byte headers and padding
        per_shard = max(1, int(TARGET_SHARD_BYTES // mean_bytes))
    starts = list(range(0, len(order), per_shard))
    names = [f"{opts.prefix}-{k:06d}" for k in range(len(starts))]

    done = {n: records[n + ".tar"] for n in names if n + ".tar" in records and _complete(out, records[n + ".tar"])}
    todo = [k for k, n in enumerate(names) if n not in done]
    ext = EXTENSIONS[opts.encoding]
    jobs = []
    for k in todo:
        stop = min(starts[k] + per_shard, len(order))
        indices = order[starts[k] : stop]
        jobs.append(ShardJob(out, names[k], starts[k], indices, labels[starts[k] : stop],
                             bool(validated.transcode[indices].any()), opts.encoding, ext, opts.image_size,
                             opts.resize))
    bar = tqdm(total=sum(len(j.indices) for j in jobs), desc="write", unit="img", disable=not opts.progress,
               smoothing=0.1)
    try:
        for job, record in run_jobs(source, jobs, workers, bar.update):
            done[job.name] = records[record.name] = record
            write_json_atomic(state_path, {"fingerprint": fingerprint,
                                           "shards": {n: asdict(r) for n, r in records.items()}})
    finally:
        bar.close()

    manifest = Manifest(
        num_samples=len(order), num_classes=int(labels.max()) + 1, image_size=opts.image_size,
        encoding=opts.encoding, seed=opts.seed, shards=tuple(done[n] for n in names),
        source=fingerprint["source"], class_map=class_map,
        skipped=tuple(source.where(i) for i, _ in validated.errors),
        extra={"fingerprint": fingerprint, "samples_per_shard": per_shard},
    )
    manifest.save(out)
    os.remove(state_path)
    os.remove(validated_path)
    return manifest
