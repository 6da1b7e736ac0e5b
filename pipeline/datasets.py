"""Several converted directories as one dataset: their layout (key and class offsets) and their joined index.

`data.shards` may list directories written by `python -m convert`. They are laid end to end in the order
given: dataset d's own key k is the union's key k + (samples of the datasets before d), and its label c
the union's class c + (classes of the datasets before d), both read from the manifests. Everything
downstream (the epoch order, the teacher cache's rows, the margin head's classes) sees one dataset of
sum(N_d) samples and sum(C_d) classes. One directory is the union of one: keys and classes unchanged.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from configs import rules
from pipeline.order import check_weights, epoch_counts
from pipeline.shard_index import DatasetSpan, ShardError, ShardIndex, image_side, load_manifest

Shards = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def shard_dirs(shards: Shards) -> tuple[str, ...]:
    """The directories of `shards` (one path, or a sequence of them), in order; a one-element sequence is
    the same as its element. Raises ShardError for an empty list or a directory listed twice."""
    if isinstance(shards, (str, os.PathLike)):
        return (os.fspath(shards),)
    dirs = tuple(os.fspath(d) for d in shards)
    problem = rules.shards_problem(dirs)  # the config's rule (data.shards), for callers without one
    if problem is not None:
        raise ShardError(f"shards (data.shards): expected {problem}")
    return dirs


def check_alike(found: Sequence[tuple[str, str, int]]) -> None:
    """Every dataset of a union holds images of one encoding and size: one DALI graph decodes them all.
    `found`: (directory, encoding, image side) per dataset; raises ShardError naming both directories."""
    first_dir, first_enc, first_side = found[0]
    for d, enc, side in found[1:]:
        if (enc, side) != (first_enc, first_side):
            raise ShardError(
                f"shards (data.shards): {first_dir} holds {first_enc} images of {first_side}x{first_side}, but {d} "
                f"holds {enc} images of {side}x{side}; the datasets of one run must share encoding and image size "
                f"(convert them again with the same --encoding and size)")


def dataset_layout(shards: Shards) -> tuple[DatasetSpan, ...]:
    """Each directory's place in the union (dir, first_key, num_samples, first_class, num_classes), from the
    manifests alone (no `.idx` parsing: cheap enough for `python -m distill plan`). Raises ShardError when a
    manifest is missing or the datasets differ in encoding or image size."""
    spans, found, key, cls = [], [], 0, 0
    for d in shard_dirs(shards):
        manifest = load_manifest(Path(d))
        spans.append(DatasetSpan(d, key, int(manifest.num_samples), cls, int(manifest.num_classes)))
        found.append((d, str(manifest.encoding), image_side(manifest.image_size)))
        key, cls = key + int(manifest.num_samples), cls + int(manifest.num_classes)
    check_alike(found)
    return tuple(spans)


def join_indexes(parts: Sequence[ShardIndex]) -> ShardIndex:
    """One index over `parts` laid end to end: their tables concatenated, with the tar numbers, keys and
    labels moved by the parts before each. A single part is returned as it is."""
    if len(parts) == 1:
        return parts[0]
    check_alike([(str(p.root), p.encoding, p.image_size) for p in parts])
    spans, shard_of, shard_dataset, key, cls, tars = [], [], [], 0, 0, 0
    for d, p in enumerate(parts):
        spans.append(DatasetSpan(str(p.root), key, p.num_samples, cls, p.num_classes))
        shard_of.append(p.shard_of.astype(np.int32) + tars)
        shard_dataset.append(np.full(len(p.paths), d, np.int32))
        key, cls, tars = key + p.num_samples, cls + p.num_classes, tars + len(p.paths)
    table = np.concatenate([p.table.astype(np.int64) for p in parts])
    if table.size and int(table.max()) < 2**32:
        table = table.astype(np.uint32)  # as ShardIndex.open: half the memory where every tar is under 4 GiB
    labels = np.concatenate([p.label_table.astype(np.int32) + s.first_class for p, s in zip(parts, spans)])
    return ShardIndex(parts[0].root, tuple(t for p in parts for t in p.paths), parts[0].encoding,
                      parts[0].image_size, key, cls, np.concatenate(shard_of), table, labels,
                      datasets=tuple(spans), shard_dataset=np.concatenate(shard_dataset))


def layout_text(datasets: Sequence[DatasetSpan], weights: Union[None, Sequence[float]] = None) -> str:
    """The layout in a few words, for the training log: the directory alone for one dataset without a
    weight, else each directory with its keys, its classes and its weight."""
    weights = check_weights(weights, len(datasets))
    if len(datasets) == 1 and weights is None:
        return datasets[0].dir
    counts = epoch_counts([span.num_samples for span in datasets], weights)
    parts = []
    for d, span in enumerate(datasets):
        text = (f"{span.dir} (keys {span.first_key}..{span.first_key + span.num_samples - 1}, classes "
                f"{span.first_class}..{span.first_class + span.num_classes - 1}")
        if weights is not None:
            text += f", weight {weights[d]:g}: {counts[d]} samples an epoch"
        parts.append(text + ")")
    return f"{len(datasets)} dataset(s) laid end to end: " + ", ".join(parts)
