"""Convert a source (.rec or identity folders) into shuffled, indexed tar shards plus manifest.json.

Two passes: `validation` decodes every image once (in parallel) and yields labels; then the
samples, in a permutation drawn from the seed, are written shard by shard, in order, and their labels
once more as a table (labels.npy, row = key) beside the shards. With `exclude_classes` (a file of source
classes, convert/class_exclusion.py) the samples of those classes are left out and the others renumbered
0..C-1 (the manifest's class_map gives each one's source class; its `exclusion` what was left out). With
`exclude_keys` (source images, convert/key_exclusion.py) those images are left out; with `merge_classes`
(convert/class_merge.py) the listed classes take another's label before the renumbering. Progress is
kept in OUT/.convert-state.json (and the validation in .convert-validated.npz), so a second run of
the same command skips every shard whose checksum matches and writes the same bytes for the rest
(convert/output_folder.py reads what an earlier run left).

One job writes an output folder at a time: the conversion holds common.files.output_lock on OUT from start to
end, and a second one stops at once naming the holder.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from tqdm import tqdm

from common.errors import InputError
from common.files import output_lock, remove_stale_temporaries, write_json_atomic
from convert.image_check import DEFAULT_MAX_PIXELS, CorruptImageError
from convert.class_exclusion import ExclusionList, read_exclusion_list, resolve
from convert.class_exclusion import record as exclusion_record
from convert import class_merge, key_exclusion
from convert.labels_table import write_labels
from convert.manifest import EXTENSIONS, Manifest
from convert.output_folder import (STATE_NAME, VALIDATED_NAME, OutputError, complete, finished, load_validated,
                                   previous_records, sealed)
from convert.shard_jobs import ShardJob, run_jobs
from convert.sources import FolderSource, RecSource, SourceError
from convert.validation import Validated, validate_source

TARGET_SHARD_BYTES = 384 * 2**20  # DESIGN.md: shards of about 256-512 MB


class OptionError(InputError, ValueError):
    """A conversion option out of its range; the message names the option and the value."""



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
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger source images are refused before they are decoded
    exclude_classes: Optional[str] = None  # a file of source classes to leave out (convert/class_exclusion.py)
    exclude_keys: Optional[str] = None  # a file of source images to leave out (convert/key_exclusion.py)
    merge_classes: Optional[str] = None  # a file of FROM -> TO source classes (convert/class_merge.py)

    def __post_init__(self) -> None:
        if self.encoding not in EXTENSIONS:
            raise OptionError(f"encoding must be one of {sorted(EXTENSIONS)}, found {self.encoding!r}")
        if self.samples_per_shard is not None and self.samples_per_shard < 1:
            raise OptionError(f"samples_per_shard must be >= 1, found {self.samples_per_shard}")
        if self.workers is not None and self.workers < 1:
            raise OptionError(f"workers must be >= 1, found {self.workers}")
        if self.image_size < 1:
            raise OptionError(f"image_size must be >= 1, found {self.image_size}")
        if self.max_pixels < 1:
            raise OptionError(f"max_pixels must be >= 1, found {self.max_pixels}")
        if not self.prefix or "/" in self.prefix or "." in self.prefix:
            raise OptionError(f"prefix must be a plain name without '/' or '.', found {self.prefix!r}")

    def affecting_output(self) -> dict:
        """The options that change the shards' bytes (workers, progress, overwrite do not; skip_corrupt
        and max_pixels do not either: with an image they refuse, no shard is written). The decision files
        (exclusion, key exclusion, merge lists) count by their content, not their path: `_fingerprint`
        adds their sha256."""
        d = asdict(self)
        for k in ("workers", "progress", "overwrite", "skip_corrupt", "max_pixels", "exclude_classes",
                  "exclude_keys", "merge_classes"):
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


def _fingerprint(source, opts: ConvertOptions, exclusion: Optional[ExclusionList], keys=None, merge=None) -> dict:
    """What a rerun must match to resume or to find the conversion finished: the source and the options
    that change the output, each decision file by its sha256 (absent without one, so that the
    fingerprints of conversions without a list stay what they were)."""
    options = opts.affecting_output()
    if exclusion is not None:
        options["exclude_classes_sha256"] = exclusion.sha256
    if keys is not None:
        options["exclude_keys_sha256"] = keys.sha256
    if merge is not None:
        options["merge_classes_sha256"] = merge.sha256
    return {"source": source.describe(), "options": options}


def _class_labels(source, labels: np.ndarray, keep: np.ndarray, excluded: np.ndarray,
                  emptied: np.ndarray) -> tuple:
    """(contiguous label of each kept item, class_map or None), checking that no identity folder that is
    not excluded lost all its images. keep: bool [N], the readable items of classes not excluded; labels:
    the source labels after merging; emptied: the classes --exclude-keys or --merge-classes emptied."""
    valid = np.flatnonzero(keep)
    if len(valid) == 0:
        what = "no readable images" if not excluded.size else "no readable images outside the excluded classes"
        raise SourceError(f"{source.describe()['path']}: {what}")
    classes, contiguous = np.unique(labels[valid], return_inverse=True)
    if isinstance(source, FolderSource):
        present = set(classes.tolist()) | set(excluded.tolist()) | set(emptied.tolist())
        for label in range(len(source.classes)):
            if label not in present:
                raise SourceError(f"{os.path.join(source.root, source.classes[label])}: identity folder has no readable images")
        return contiguous, tuple(source.classes[int(c)] for c in classes)
    if np.array_equal(classes, np.arange(len(classes))):
        return contiguous, None
    return contiguous, tuple(int(c) for c in classes)


def _convert(source, out: str, opts: ConvertOptions) -> Manifest:
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputError(f"{out}: output path is a file, expected a directory")
    path = source.rec if source.kind == "rec" else source.root
    with output_lock(out, f"python -m convert {source.kind} {path} {out}"):
        return _convert_locked(source, out, opts)


def _convert_locked(source, out: str, opts: ConvertOptions) -> Manifest:
    """Both passes, the shuffle and the manifest, while this process holds the lock on `out`."""
    workers = opts.workers or os.cpu_count() or 1
    decisions = _read_decisions(source, opts)
    fingerprint = _fingerprint(source, opts, decisions.exclusion, decisions.keys, decisions.merge)
    records = previous_records(out, fingerprint, opts.overwrite, opts.prefix)
    remove_stale_temporaries(out)  # what a killed run was writing; its rerun writes the same files again
    done_before = finished(out, fingerprint)
    if done_before is not None:
        return done_before
    validated = _first_pass(source, out, opts, workers, fingerprint, records)
    chosen = _select(source, validated, decisions)
    perm = np.random.default_rng(opts.seed).permutation(len(chosen.valid))
    order, labels = chosen.valid[perm], chosen.contiguous[perm]
    per_shard = _samples_per_shard(opts, validated, chosen.valid)
    shards = _write_shards(source, out, opts, workers, fingerprint, records, validated, order, labels, per_shard)
    manifest = sealed(Manifest(
        num_samples=len(order), num_classes=int(labels.max()) + 1, image_size=opts.image_size,
        encoding=opts.encoding, seed=opts.seed, shards=shards, source=fingerprint["source"],
        class_map=chosen.class_map, skipped=tuple(source.where(i) for i, _ in validated.errors),
        labels=write_labels(out, labels),  # before the manifest that lists it
        **_decision_records(source, validated, decisions, chosen),
        extra={"fingerprint": fingerprint, "samples_per_shard": per_shard},
    ))
    manifest.save(out)
    os.remove(os.path.join(out, STATE_NAME))
    os.remove(os.path.join(out, VALIDATED_NAME))
    return manifest


@dataclass(frozen=True)
class _Decisions:
    """The decision files a conversion was given, read (each None when not given)."""

    exclusion: Optional[ExclusionList]  # --exclude-classes: source classes to leave out
    keys: Optional[ExclusionList]  # --exclude-keys: source images to leave out
    merge: Optional[class_merge.MergeList]  # --merge-classes: FROM -> TO source classes
    dropped: np.ndarray  # int64: the source items `keys` names (checked against the source's keys once, here)


def _read_decisions(source, opts: ConvertOptions) -> _Decisions:
    """The decision files, read, and checked against the source where that needs no image read."""
    exclusion = read_exclusion_list(opts.exclude_classes) if opts.exclude_classes is not None else None
    keys = key_exclusion.read_key_list(opts.exclude_keys) if opts.exclude_keys is not None else None
    merge = class_merge.read_merge_list(opts.merge_classes) if opts.merge_classes is not None else None
    if source.kind == "folder":  # a folder's classes and images are its names: a wrong one fails before any work
        if exclusion is not None:
            resolve(exclusion, source)
        if merge is not None:
            class_merge.resolve(merge, source, excluded=resolve(exclusion, source) if exclusion else None)
    # the source's keys are known without reading an image
    dropped = key_exclusion.resolve(keys, source) if keys is not None else np.zeros(0, np.int64)
    return _Decisions(exclusion, keys, merge, dropped)


def _first_pass(source, out: str, opts: ConvertOptions, workers: int, fingerprint: dict, records: dict) -> Validated:
    """The first pass's results: an earlier run's where it left them, else every image decoded now (and
    saved); the state file started. A corrupt image stops here unless --skip-corrupt."""
    state_path, validated_path = os.path.join(out, STATE_NAME), os.path.join(out, VALIDATED_NAME)
    if records or (os.path.exists(state_path) and os.path.exists(validated_path)):
        validated = load_validated(validated_path)
    else:
        validated = None
    if validated is None or len(validated.ok) != len(source):
        validated = validate_source(source, opts.encoding, opts.image_size, opts.resize, workers, opts.progress,
                                    opts.max_pixels)
        validated.save(validated_path)
    write_json_atomic(state_path, {"fingerprint": fingerprint, "shards": {n: asdict(r) for n, r in records.items()}})
    if validated.errors and not opts.skip_corrupt:
        index, message = validated.errors[0]
        raise CorruptImageError(f"{message} ({len(validated.errors)} corrupt images; --skip-corrupt leaves them out)")
    return validated


@dataclass(frozen=True)
class _Selection:
    """Which source items a conversion keeps, and the labels they take."""

    excluded: np.ndarray  # int64: the source classes --exclude-classes leaves out
    dropped: np.ndarray  # int64: the source items --exclude-keys leaves out
    mapping: dict  # --merge-classes: source class -> the source class it merges into
    labels_merged: np.ndarray  # every item's source label after merging
    keep: np.ndarray  # bool [N]: the items written
    valid: np.ndarray  # the kept items' indices (np.flatnonzero(keep))
    contiguous: np.ndarray  # the contiguous label of each kept item, in `valid`'s order
    class_map: Optional[tuple]  # the source class of each contiguous label, None when they are the same


def _select(source, validated: Validated, decisions: _Decisions) -> _Selection:
    """The readable items outside the excluded classes and images, classes merged, labels made contiguous."""
    exclusion, merge, dropped = decisions.exclusion, decisions.merge, decisions.dropped
    present = validated.labels[validated.ok]
    excluded = resolve(exclusion, source, present) if exclusion is not None else np.zeros(0, np.int64)
    mapping = class_merge.resolve(merge, source, present, excluded) if merge is not None else {}
    labels_merged = class_merge.apply(validated.labels, mapping)
    keep = validated.ok & ~np.isin(validated.labels, excluded)
    classes_before = np.unique(validated.labels[keep])
    keep[dropped] = False
    emptied = np.setdiff1d(classes_before, labels_merged[keep])
    contiguous, class_map = _class_labels(source, labels_merged, keep, excluded, emptied)
    return _Selection(excluded, dropped, mapping, labels_merged, keep, np.flatnonzero(keep), contiguous, class_map)


def _samples_per_shard(opts: ConvertOptions, validated: Validated, valid: np.ndarray) -> int:
    """--samples-per-shard, or as many as fill about TARGET_SHARD_BYTES."""
    if opts.samples_per_shard is not None:
        return opts.samples_per_shard
    mean_bytes = float(validated.nbytes[valid].mean()) + 1536  # two 512-byte headers and padding
    return max(1, int(TARGET_SHARD_BYTES // mean_bytes))


def _write_shards(source, out: str, opts: ConvertOptions, workers: int, fingerprint: dict, records: dict,
                  validated: Validated, order: np.ndarray, labels: np.ndarray, per_shard: int) -> tuple:
    """The second pass: every shard an earlier run did not finish, written in parallel, each one recorded
    in the state file as it completes. Returns every shard's record, in order."""
    state_path = os.path.join(out, STATE_NAME)
    starts = list(range(0, len(order), per_shard))
    names = [f"{opts.prefix}-{k:06d}" for k in range(len(starts))]
    done = {n: records[n + ".tar"] for n in names if n + ".tar" in records and complete(out, records[n + ".tar"])}
    todo = [k for k, n in enumerate(names) if n not in done]
    ext = EXTENSIONS[opts.encoding]
    jobs = []
    for k in todo:
        stop = min(starts[k] + per_shard, len(order))
        indices = order[starts[k] : stop]
        jobs.append(ShardJob(out, names[k], starts[k], indices, labels[starts[k] : stop],
                             bool(validated.transcode[indices].any()), opts.encoding, ext, opts.image_size,
                             opts.resize, opts.max_pixels))
    bar = tqdm(total=sum(len(j.indices) for j in jobs), desc="write", unit="img", disable=not opts.progress,
               smoothing=0.1)
    try:
        for job, record in run_jobs(source, jobs, workers, bar.update):
            done[job.name] = records[record.name] = record
            write_json_atomic(state_path, {"fingerprint": fingerprint,
                                           "shards": {n: asdict(r) for n, r in records.items()}})
    finally:
        bar.close()
    return tuple(done[n] for n in names)


def _decision_records(source, validated: Validated, decisions: _Decisions, chosen: _Selection) -> dict:
    """The manifest's exclusion, key_exclusion and merge records (None for a decision file not given)."""
    exclusion, keys, merge = decisions.exclusion, decisions.keys, decisions.merge
    return {
        "exclusion": (exclusion_record(exclusion, source, chosen.excluded,
                                       int((validated.ok & np.isin(validated.labels, chosen.excluded)).sum()))
                      if exclusion is not None else None),
        "key_exclusion": key_exclusion.record(keys, source, chosen.dropped) if keys is not None else None,
        "merge": (class_merge.record(merge, source, chosen.mapping,
                                     dict(zip(chosen.labels_merged[chosen.valid].tolist(), chosen.contiguous.tolist())),
                                     int((chosen.keep & np.isin(validated.labels, list(chosen.mapping))).sum()))
                  if merge is not None else None),
    }
