"""Each shard sample's source image: the .rec record key or folder path it was converted from.

The shards name a sample by its key in the shuffled order; a user's decisions (convert --exclude-keys)
name source images, since a rebuild reads the source. The conversion's order is reproducible from the
manifest: the source's items in source order, less the skipped (manifest.skipped), excluded-class
(manifest.exclusion) and excluded (manifest.key_exclusion) ones, permuted by default_rng(seed) exactly
as convert/converter.py does. That needs the source itself, unchanged since the conversion (its
description equals the manifest's source); the reconstruction is checked against the shards' labels
(folder sources) and their stored bytes (JPEG shards hold the source's bytes unchanged).
"""
from __future__ import annotations


import numpy as np

from common.errors import InputError
from convert.key_exclusion import item_names
from convert.manifest import Manifest
from convert.sources import FolderSource, RecSource, SourceError

CHECKED = 16  # samples whose bytes are compared with the source's


class SourceKeysError(InputError, ValueError):
    """The source of a shards directory cannot be found, changed since the conversion, or does not give
    back its samples."""


def _labels(source) -> np.ndarray:
    if source.kind == "folder":
        return np.asarray(source.labels, np.int64)
    return np.asarray([source.read(i)[0] for i in range(len(source))], np.int64)  # a pass over the .rec


def source_keys(shards_dir, samples=None) -> list:
    """[num_samples] each shard key's source image name (a .rec record key as text, or a path under the
    folder source's root). samples: an object with `encoded(keys)` and `labels(keys)` over this directory
    (pipeline.ShardSamples) to check the reconstruction against; None checks nothing."""
    m = Manifest.load(shards_dir)
    path, kind = m.source.get("path"), m.source.get("kind")
    try:
        source = RecSource(path) if kind == "rec" else FolderSource(path)
    except SourceError as err:
        raise SourceKeysError(f"{shards_dir}: the source it was converted from is not readable ({err})") from None
    if source.describe() != dict(m.source):
        raise SourceKeysError(f"{shards_dir}: its source {path} changed since the conversion (the manifest's "
                              f"description differs); convert it again first")
    n = len(source)
    keep = np.ones(n, bool)
    where = {source.where(i): i for i in range(n)} if m.skipped else {}
    keep[[where[w] for w in m.skipped if w in where]] = False
    labels = None
    if m.exclusion is not None:
        labels = _labels(source)
        names = [source.classes.index(c) for c in m.exclusion.classes] if kind == "folder" else list(m.exclusion.classes)
        keep &= ~np.isin(labels, np.asarray(names, np.int64))
    names = item_names(source)
    if m.key_exclusion is not None:
        index = {name: i for i, name in enumerate(names)}
        keep[[index[str(k)] for k in m.key_exclusion.keys]] = False
    valid = np.flatnonzero(keep)
    if valid.size != m.num_samples:
        raise SourceKeysError(f"{shards_dir}: {valid.size} source images after the manifest's exclusions, but "
                              f"{m.num_samples} samples in the shards")
    items = valid[np.random.default_rng(m.seed).permutation(valid.size)]
    if samples is not None:
        _check(shards_dir, m, source, items, samples)
    return [names[int(i)] for i in items]


def _check(shards_dir, m: Manifest, source, items: np.ndarray, samples) -> None:
    keys = np.unique(np.linspace(0, m.num_samples - 1, min(CHECKED, m.num_samples)).astype(np.int64))
    if m.encoding == "jpeg":
        for k, stored in zip(keys, samples.encoded(keys)):
            if bytes(stored) != bytes(source.image(int(items[k]))):
                raise SourceKeysError(f"{shards_dir}: sample {k} is not the source image {source.where(int(items[k]))} "
                                      f"the manifest's order gives; the shards do not come from this source")
    if source.kind == "folder" and m.merge is None:
        names = m.class_map or tuple(source.classes)
        shard = samples.labels(keys)
        for k, label in zip(keys, shard):
            if names[int(label)] != source.classes[source.labels[int(items[k])]]:
                raise SourceKeysError(f"{shards_dir}: sample {k} has another class than the source image "
                                      f"{source.where(int(items[k]))}")
