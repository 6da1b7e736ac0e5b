"""Several shards directories as one dataset: a `.rec`-converted and a folder-converted set (other identities)
laid end to end. Every sample once an epoch with its labels moved past the first set's classes (checked against
each set read alone), messages naming each sample's own tar and member, weights that repeat or subsample a set
each epoch and stay exact on resume, both backends alike, and the refusals."""
from __future__ import annotations


import numpy as np
import pytest
import torch

import convert
import pipeline
from convert.synthetic import write_synthetic
from pipeline.loader import open_index
from pipeline.order import plan_epoch
from pipeline.shard_index import ShardReader

BACKENDS = ["dali", "torch"]
A_IDS, A_PER, B_IDS, B_PER = 6, 5, 4, 6          # 30 + 24 = 54 samples, 6 + 4 = 10 classes
NA, NB = A_IDS * A_PER, B_IDS * B_PER


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("datasets")
    write_synthetic(root / "rec", A_IDS, A_PER, seed=1, fmt="rec", workers=1)
    write_synthetic(root / "folder", B_IDS, B_PER, seed=2, fmt="folder", first_identity=100, workers=1)
    convert.convert_rec(root / "rec", root / "a", samples_per_shard=8, workers=1, progress=False)
    convert.convert_folder(root / "folder", root / "b", samples_per_shard=7, workers=1, progress=False)
    convert.convert_rec(root / "rec", root / "a_raw", encoding="raw", workers=1, progress=False)
    return {"a": root / "a", "b": root / "b", "a_raw": root / "a_raw", "root": root}


def _epoch(shards, batch_size, backend, epoch=0, step=0, **kw):
    return list(pipeline.build_loader(shards, batch_size, device="cpu", backend=backend, with_flip=True,
                                      **kw).epoch(epoch, step))


def _keys(batches) -> np.ndarray:
    return np.concatenate([b.keys for b in batches])


def test_the_layout_follows_the_manifests(sets):
    a, b = str(sets["a"]), str(sets["b"])
    assert pipeline.dataset_layout([a, b]) == (pipeline.DatasetSpan(a, 0, NA, 0, A_IDS),
                                               pipeline.DatasetSpan(b, NA, NB, A_IDS, B_IDS))
    assert pipeline.dataset_layout([a]) == pipeline.dataset_layout(a) == (pipeline.DatasetSpan(a, 0, NA, 0, A_IDS),)
    loader = pipeline.build_loader([a, b], 6, device="cpu")
    assert (loader.num_samples, loader.num_classes, len(loader)) == (NA + NB, A_IDS + B_IDS, (NA + NB) // 6)
    assert [(d.first_key, d.first_class) for d in loader.datasets] == [(0, 0), (NA, A_IDS)]
    text = pipeline.layout_text(loader.datasets, [1, 0.5])
    assert f"keys {NA}..{NA + NB - 1}, classes {A_IDS}..{A_IDS + B_IDS - 1}, weight 0.5: {NB // 2} samples" in text
    assert pipeline.layout_text(pipeline.dataset_layout(a)) == a  # one directory: logged as before


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_epoch_of_the_union_holds_every_sample_once_with_offset_labels(sets, backend):
    alone = {"a": pipeline.ShardSamples(sets["a"]), "b": pipeline.ShardSamples(sets["b"])}
    expected_labels = np.concatenate([alone["a"].labels(np.arange(NA)), alone["b"].labels(np.arange(NB)) + A_IDS])
    batches = _epoch([sets["a"], sets["b"]], 6, backend, seed=3, epoch=1)
    keys = _keys(batches)
    assert sorted(keys.tolist()) == list(range(NA + NB))  # 54 = 9 x 6: nothing dropped
    assert set(np.concatenate([b.labels.numpy() for b in batches]).tolist()) == set(range(A_IDS + B_IDS))
    for batch in batches:
        assert np.array_equal(batch.labels.numpy(), expected_labels[batch.keys])
        assert np.array_equal(batch.global_labels, expected_labels[batch.keys])
        for img, key, flipped in zip(batch.images, batch.keys.tolist(), batch.flips.tolist()):
            name, local = ("a", key) if key < NA else ("b", key - NA)
            ref = alone[name].images(np.array([local]), device="cpu")[0]
            ref = ref.flip(2) if flipped else ref
            diff = (img - ref).abs() * 127.5  # decoders differ by a few levels at most (tests/pipeline/test_loader.py)
            assert diff.max() <= 4.0 and diff.mean() < 0.5, (key, float(diff.max()))


def test_the_union_reads_each_sets_own_bytes_and_names_its_own_members(sets):
    union = pipeline.ShardSamples([sets["a"], sets["b"]])
    assert (union.num_samples, union.num_classes) == (NA + NB, A_IDS + B_IDS)
    for name, first, n in (("a", 0, NA), ("b", NA, NB)):
        alone = pipeline.ShardSamples(sets[name])
        ours, theirs = union.encoded(np.arange(first, first + n)), alone.encoded(np.arange(n))
        assert all(x.tobytes() == y.tobytes() for x, y in zip(ours, theirs))
    reader = ShardReader(open_index([sets["a"], sets["b"]]))
    assert reader.member(NA) == f"{sets['b'].resolve()}/train-000000.tar: sample 000000000.jpg"
    assert reader.member(NA + 8) == f"{sets['b'].resolve()}/train-000001.tar: sample 000000008.jpg"
    assert reader.member(NA - 1) == f"{sets['a'].resolve()}/train-000003.tar: sample {NA - 1:09d}.jpg"


def test_one_directory_in_a_list_is_the_directory(sets):
    for backend in BACKENDS:
        plain, listed = _epoch(sets["a"], 8, backend, seed=2), _epoch([sets["a"]], 8, backend, seed=2, weights=[1])
        assert len(plain) == len(listed)
        for x, y in zip(plain, listed):
            assert torch.equal(x.index, y.index) and torch.equal(x.labels, y.labels) and torch.equal(x.images, y.images)


def test_weights_repeat_and_subsample_each_epoch():
    sizes, seed = [1000, 300], 4
    for epoch in range(3):
        plan = plan_epoch(sizes, 10, seed=seed, epoch=epoch, rank=0, world_size=1, weights=[2, 0.5])
        counts = np.bincount(plan.global_samples.ravel(), minlength=1300)
        assert plan.steps == (2000 + 150) // 10
        assert (counts[:1000] == 2).all()                        # w = 2: every sample twice
        assert set(counts[1000:].tolist()) == {0, 1} and counts[1000:].sum() == 150  # w = 0.5: a half
    halves = [set(np.flatnonzero(np.bincount(plan_epoch(sizes, 10, seed=seed, epoch=e, rank=0, world_size=1,
                                                        weights=[2, 0.5]).global_samples.ravel(),
                                             minlength=1300)[1000:]).tolist()) for e in range(2)]
    assert halves[0] != halves[1]  # the half is drawn anew each epoch
    counts = np.bincount(plan_epoch(sizes, 7, seed=0, epoch=0, rank=0, world_size=1,
                                    weights=[1.5, 0]).global_samples.ravel(), minlength=1300)
    assert set(counts[:1000].tolist()) == {1, 2} and not counts[1000:].any()  # 1.5: once, and a random half again
    assert plan_epoch(sizes, 10, seed=1, epoch=2, rank=0, world_size=1).steps == 130
    assert pipeline.epoch_size(sizes, [2, 0.5]) == 2150 and pipeline.epoch_size(sizes) == 1300
    # Weights of 1 are no weights: the very order of an unweighted epoch.
    assert np.array_equal(plan_epoch(sizes, 10, seed=1, epoch=2, rank=0, world_size=1, weights=[1, 1]).global_samples,
                          plan_epoch(1300, 10, seed=1, epoch=2, rank=0, world_size=1).global_samples)


def test_weighted_epochs_resume_exactly_at_any_step():
    sizes, weights = [90, 40], [1.5, 0.75]
    for epoch in range(3):
        whole = [plan_epoch(sizes, 5, seed=9, epoch=epoch, rank=r, world_size=2, weights=weights) for r in range(2)]
        assert whole[0].steps == (135 + 30) // 10
        again = plan_epoch(sizes, 5, seed=9, epoch=epoch, rank=1, world_size=2, weights=weights)
        assert np.array_equal(again.samples, whole[1].samples)  # a pure function of (seed, epoch)
        for step in range(whole[0].steps):
            assert np.array_equal(np.concatenate([whole[0].samples[step], whole[1].samples[step]]),
                                  whole[0].global_samples[step])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_weighted_union_resumes_with_the_same_batches(sets, backend):
    union, weights = [sets["a"], sets["b"]], [2, 0.5]
    full = _epoch(union, 6, backend, seed=5, epoch=3, rank=1, world_size=2, weights=weights)
    assert len(full) == (2 * NA + NB // 2) // 12
    counts = np.bincount(np.concatenate([_keys(full), _keys(_epoch(union, 6, backend, seed=5, epoch=3, rank=0,
                                                                   world_size=2, weights=weights))]),
                         minlength=NA + NB)
    assert counts[:NA].sum() + counts[NA:].sum() == len(full) * 12 and counts[NA:].max() <= 1
    for step in (1, len(full) - 1):
        rest = _epoch(union, 6, backend, seed=5, epoch=3, rank=1, world_size=2, step=step, weights=weights)
        assert len(rest) == len(full) - step
        for x, y in zip(full[step:], rest):
            for name in ("images", "labels", "index", "flipped"):
                assert torch.equal(getattr(x, name), getattr(y, name)), (step, name)
            assert np.array_equal(x.global_labels, y.global_labels)


def test_both_backends_agree_on_a_weighted_union(sets):
    union = [sets["a"], sets["b"]]
    dali, torch_ = (_epoch(union, 6, b, seed=2, epoch=1, weights=[1, 0.5]) for b in BACKENDS)
    assert len(dali) == len(torch_) == (NA + NB // 2) // 6
    for x, y in zip(dali, torch_):
        assert torch.equal(x.index, y.index) and torch.equal(x.labels, y.labels) and torch.equal(x.flipped, y.flipped)
        assert (x.images - y.images).abs().max().item() * 127.5 <= 4.0


def test_sets_of_another_encoding_are_refused_naming_both(sets):
    for call in (lambda: pipeline.dataset_layout([sets["a"], sets["a_raw"]]),
                 lambda: pipeline.build_loader([sets["a"], sets["a_raw"]], 6, device="cpu")):
        with pytest.raises(pipeline.ShardError) as err:
            call()
        assert all(word in str(err.value) for word in (str(sets["a"]), str(sets["a_raw"]), "jpeg", "raw", "112x112"))


@pytest.mark.parametrize("weights, words", [([1], "one weight per dataset"), ([1, -1], "-1"),
                                            ([0, 0], "not all 0"), ([1, float("nan")], "nan")])
def test_bad_weights_are_refused(sets, weights, words):
    with pytest.raises(pipeline.WeightsError, match="data.weights") as err:
        pipeline.build_loader([sets["a"], sets["b"]], 6, device="cpu", weights=weights)
    assert words in str(err.value)


def test_a_directory_listed_twice_or_none_is_refused(sets):
    with pytest.raises(pipeline.ShardError, match="listed twice"):
        pipeline.build_loader([sets["a"], sets["b"], sets["a"]], 6, device="cpu")
    with pytest.raises(pipeline.ShardError, match="empty list"):
        pipeline.ShardSamples([])

