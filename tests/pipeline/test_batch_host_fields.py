"""Batch's host fields: keys and flips equal index and flipped, and global_labels are the GLOBAL batch's."""
import numpy as np
import pytest
import torch

import pipeline
from tests.pipeline.conftest import read_tars

BACKENDS = ["dali", "torch"]


def _brute_force_repeats(labels: list) -> int:
    counts: dict = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return max(counts.values())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_label_repeats_counts_all_ranks(jpeg_shards, backend, world_size):
    shards = jpeg_shards
    batch_size = 24 // world_size  # a global batch of 24 out of 24 identities x 6: repeats are common
    tars = read_tars(jpeg_shards)
    ranks = [list(pipeline.build_loader(shards, batch_size, rank=r, world_size=world_size, device="cpu",
                                        backend=backend, seed=9).epoch(1)) for r in range(world_size)]
    steps = len(ranks[0])
    assert steps == 144 // 24 and all(len(r) == steps for r in ranks)
    seen = []
    for step in range(steps):
        batches = [r[step] for r in ranks]
        global_labels = [tars[int(k)][1] for b in batches for k in b.index]  # read with tarfile, not the index
        assert sum(len(b.labels) for b in batches) == 24
        expected = _brute_force_repeats(global_labels)
        assert [_brute_force_repeats(b.global_labels.tolist()) for b in batches] == [expected] * world_size, step
        for b in batches:  # every rank knows the whole global batch's labels, in rank order
            assert b.global_labels.dtype == np.int64 and b.global_labels.tolist() == global_labels
        assert [b.labels.tolist() for b in batches] == [
            b.global_labels[r * batch_size:(r + 1) * batch_size].tolist() for r, b in enumerate(batches)]
        seen.append(expected)
    assert max(seen) > 1  # the count is exercised, not trivially 1


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_flip", [True, False])
def test_keys_and_flips_equal_index_and_flipped(jpeg_shards, backend, with_flip):
    for batch in pipeline.build_loader(jpeg_shards, 16, device="cpu", backend=backend, with_flip=with_flip,
                                       seed=2, rank=1, world_size=2).epoch(0, start_step=1):
        assert isinstance(batch.keys, np.ndarray) and batch.keys.dtype == np.int64 and batch.keys.shape == (16,)
        assert np.array_equal(batch.keys, batch.index.numpy())
        if with_flip:
            assert batch.flips.dtype == np.bool_ and np.array_equal(batch.flips, batch.flipped.numpy())
        else:
            assert batch.flips is None and batch.flipped is None


def test_keys_are_the_batch_own(jpeg_shards):
    loader = pipeline.build_loader(jpeg_shards, 16, device="cpu", backend="dali", seed=2)
    first = next(iter(loader))
    first.keys[:] = -1  # a consumer scribbling on its batch does not change the epoch's order
    again = next(iter(pipeline.build_loader(jpeg_shards, 16, device="cpu", backend="dali", seed=2)))
    assert (again.keys >= 0).all() and np.array_equal(again.keys, loader.order.plan(0).samples[0])


def test_batch_checks_its_host_fields():
    images, ids = torch.zeros(4, 3, 8, 8), torch.arange(4)
    keys = np.arange(4, dtype=np.int64)
    flips = np.zeros(4, bool)
    pipeline.Batch(images, ids, ids, keys=keys)  # flips and global_labels are optional: batches made elsewhere
    pipeline.Batch(images, ids, ids, torch.zeros(4, dtype=torch.bool), keys=keys, flips=flips,
                   global_labels=np.arange(8))
    bad = [dict(keys=keys.astype(np.int32)), dict(keys=keys[:3]), dict(keys=torch.arange(4)),
           dict(keys=keys, flips=flips.astype(np.uint8)), dict(global_labels=np.arange(6)), dict(global_labels=np.arange(2)),
           dict(global_labels=np.arange(8, dtype=np.int32)), dict(global_labels=np.zeros((2, 4), np.int64))]
    for kw in bad:
        with pytest.raises(ValueError, match=r"Batch\.(keys|flips|global_labels)"):
            pipeline.Batch(images, ids, ids, **{"keys": keys, **kw})
    with pytest.raises(ValueError, match=r"Batch\.flips: expected an array exactly when flipped is one"):
        pipeline.Batch(images, ids, ids, keys=keys, flips=flips)
