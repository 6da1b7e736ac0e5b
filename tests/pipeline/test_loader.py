"""build_loader over shards written by the real converter: ranks, order, resume, images, labels, mix."""
import numpy as np
import pytest
import torch

import pipeline
from tests.pipeline.conftest import (IDENTITIES, encode, read_tars, reference_image, smooth_image, source_labels,
                                     write_shards)

BACKENDS = ["dali", "torch"]


def _epoch(shards, batch_size, backend, epoch=0, step=0, **kw):
    kw.setdefault("device", "cpu")
    return list(pipeline.build_loader(shards, batch_size, backend=backend, with_flip=True, **kw).epoch(epoch, step))


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ranks_partition_the_epoch(jpeg_shards, backend):
    # 144 samples, 2 ranks x 10: 7 steps, 4 samples dropped.
    loaders = [pipeline.build_loader(jpeg_shards, 10, rank=r, world_size=2, device="cpu", backend=backend, seed=5)
               for r in range(2)]
    assert [len(x) for x in loaders] == [7, 7]
    assert loaders[0].num_samples == 144 and loaders[0].num_classes == IDENTITIES
    seen = [torch.cat([b.index for b in loader]) for loader in loaders]
    assert [len(s) for s in seen] == [70, 70]
    a, b = set(seen[0].tolist()), set(seen[1].tolist())
    assert len(a) == 70 and len(b) == 70 and not a & b
    assert (a | b) <= set(range(144)) and len(a | b) == 140
    # A single process with the global batch sees the same samples at each step.
    single = [set(x.index.tolist()) for x in pipeline.build_loader(jpeg_shards, 20, device="cpu", backend=backend,
                                                                     seed=5)]
    assert single == [set(seen[0][s * 10:(s + 1) * 10].tolist()) | set(seen[1][s * 10:(s + 1) * 10].tolist())
                      for s in range(7)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shards", ["jpeg_shards", "raw_shards"])
def test_images_labels_index_match_the_shards(request, source, shards, backend):
    shards = request.getfixturevalue(shards)
    tars, by_jpeg = read_tars(shards), source_labels(source)
    batches = _epoch(shards, 16, backend, epoch=2)  # batches are all held: no buffer is recycled under them
    flips = torch.cat([b.flipped for b in batches])
    assert 0 < int(flips.sum()) < len(flips)  # both flipped and plain images are checked
    for batch in batches:
        assert batch.images.shape == (16, 3, 112, 112) and batch.images.dtype == torch.float32
        for img, label, key, flipped in zip(batch.images, batch.labels, batch.index, batch.flipped):
            member, cls = tars[int(key)]
            assert int(label) == cls
            if member[:2] == b"\xff\xd8":  # the bytes are the source's, unchanged, with the source's label
                assert by_jpeg[member] == cls
            diff = np.abs(img.numpy() - reference_image(member, bool(flipped))) * 127.5
            assert diff.max() <= 4.0 and diff.mean() < 0.5, (int(key), diff.max(), diff.mean())


@pytest.mark.parametrize("backend", BACKENDS)
def test_order_is_a_function_of_seed_and_epoch(jpeg_shards, backend):
    first = _epoch(jpeg_shards, 16, backend, seed=3, epoch=1)
    again = _epoch(jpeg_shards, 16, backend, seed=3, epoch=1)
    for a, b in zip(first, again):
        assert torch.equal(a.index, b.index) and torch.equal(a.flipped, b.flipped)
        assert torch.equal(a.images, b.images)
    order = torch.cat([b.index for b in first])
    assert not torch.equal(order, torch.cat([b.index for b in _epoch(jpeg_shards, 16, backend, seed=3, epoch=2)]))
    assert not torch.equal(order, torch.cat([b.index for b in _epoch(jpeg_shards, 16, backend, seed=4, epoch=1)]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_yields_the_rest_of_the_epoch(jpeg_shards, backend):
    full = _epoch(jpeg_shards, 12, backend, seed=7, epoch=4, rank=1, world_size=2)
    loader = pipeline.build_loader(jpeg_shards, 12, seed=7, rank=1, world_size=2, device="cpu",
                                   backend=backend, with_flip=True)
    assert len(loader) == len(full) == 6
    rest = list(loader.epoch(4, start_step=2))
    assert len(rest) == 4
    for a, b in zip(full[2:], rest):
        for name in ("images", "labels", "index", "flipped"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert list(pipeline.build_loader(jpeg_shards, 12, world_size=1, device="cpu", backend=backend).epoch(0, 12)) == []


def test_backends_agree(jpeg_shards, raw_shards):
    dali = _epoch(jpeg_shards, 16, "dali", seed=2)
    for other in (_epoch(jpeg_shards, 16, "torch", seed=2), _epoch(raw_shards, 16, "dali", seed=2)):
        assert len(dali) == len(other)
        for a, b in zip(dali, other):
            assert torch.equal(a.index, b.index) and torch.equal(a.labels, b.labels)
            assert torch.equal(a.flipped, b.flipped)
            assert (a.images - b.images).abs().max().item() * 127.5 <= 4.0


def _expected_distinct(batch: int, classes: int, per_class: int) -> float:
    """Mean distinct classes in a uniformly random batch drawn without replacement."""
    n = classes * per_class
    p_absent = np.prod([(n - per_class - i) / (n - i) for i in range(batch)])
    return classes * (1.0 - p_absent)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batches_mix_identities(jpeg_shards, backend):
    batches = _epoch(jpeg_shards, 16, backend, seed=11)
    mean = np.mean([len(set(b.labels.tolist())) for b in batches])
    assert mean >= 0.9 * _expected_distinct(16, IDENTITIES, 144 // IDENTITIES)


def test_augmentations_are_deterministic_and_change_images(jpeg_shards):
    aug = {"crop": 0.5, "low_res": 0.5, "photometric": 0.5}
    plain = _epoch(jpeg_shards, 16, "dali", seed=1)
    for backend in BACKENDS:
        a = _epoch(jpeg_shards, 16, backend, seed=1, augment=aug)
        b = _epoch(jpeg_shards, 16, backend, seed=1, augment=pipeline.Augment(**aug))
        for x, y, p in zip(a, b, plain):
            assert torch.equal(x.images, y.images) and torch.equal(x.index, p.index)
            assert x.images.shape == p.images.shape and torch.isfinite(x.images).all()
            assert x.images.min() >= -1.0 and x.images.max() <= 1.0
        changed = np.mean([(x.images - p.images).abs().amax(dim=(1, 2, 3)).gt(0.05).float().mean()
                           for x, p in zip(a, plain)])
        assert 0.5 < changed < 1.0, (backend, changed)  # P(at least one of three at 0.5) = 0.875


def test_bfloat16_output(jpeg_shards):
    f32 = _epoch(jpeg_shards, 16, "dali")[0].images
    bf16 = _epoch(jpeg_shards, 16, "dali", dtype=torch.bfloat16)[0].images
    assert bf16.dtype == torch.bfloat16 and torch.allclose(bf16.float(), f32, atol=1e-2)
    assert pipeline.build_loader(jpeg_shards, 16, device="cpu").backend == "dali"


@pytest.mark.parametrize("backend", BACKENDS)
def test_png_members_decode_in_both_backends(tmp_path, backend):
    # DALI's decoder takes any format whatever the member's extension; the torch backend must too.
    pixels = [smooth_image(i) for i in range(8)]
    shards = write_shards(tmp_path / "png", [encode(p, "PNG") for p in pixels], [i % 2 for i in range(8)],
                          num_classes=2)
    batches = list(pipeline.build_loader(shards, 4, device="cpu", backend=backend, with_flip=True))
    assert len(batches) == 2
    for batch in batches:
        for image, key, label, flipped in zip(batch.images, batch.index.tolist(), batch.labels.tolist(),
                                              batch.flipped.tolist()):
            expected = pixels[key][:, ::-1] if flipped else pixels[key]
            expected = (torch.from_numpy(expected.astype(np.float32)).permute(2, 0, 1) - 127.5) / 127.5
            assert label == key % 2
            torch.testing.assert_close(image, expected, rtol=0, atol=1e-6)  # PNG is lossless


def test_one_graph_serves_every_epoch_and_is_not_shared(jpeg_shards):
    """The DALI graph an epoch ends with serves the loader's next epoch (pipeline/dali_loader.py keeps it);
    an epoch left midway drops its graph, and two loaders iterated side by side never share one."""
    reference = [_epoch(jpeg_shards, 16, "dali", seed=2, epoch=e) for e in (0, 1)]
    loader = pipeline.build_loader(jpeg_shards, 16, seed=2, device="cpu", backend="dali", with_flip=True)
    for e in (0, 1):
        batches = iter(loader.epoch(e))
        next(batches)
        batches.close()  # left after one batch, others in flight
    for e in (0, 1):  # the graph the first whole epoch ends with reads the second
        assert all(torch.equal(a.images, b.images) and torch.equal(a.index, b.index)
                   for a, b in zip(loader.epoch(e), reference[e], strict=True))
    side_by_side = zip(*(pipeline.build_loader(jpeg_shards, 16, seed=2, device="cpu", backend="dali",
                                               with_flip=True).epoch(e) for e in (0, 1)))
    for step, (a, b) in enumerate(side_by_side):
        for got, want in ((a, reference[0][step]), (b, reference[1][step])):
            assert torch.equal(got.index, want.index) and torch.equal(got.images, want.images)
    again = _epoch(jpeg_shards, 16, "dali", seed=2, epoch=1)
    assert all(torch.equal(a.images, b.images) and torch.equal(a.index, b.index) for a, b in zip(again, reference[1]))


def test_dali_graphs_run_a_thread_beyond_the_rank_s_cores(monkeypatch):
    from pipeline import dali_graph
    from pipeline.device import cpu_threads, dali_threads

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert dali_threads() == max(1, cpu_threads() // 2) + 1
    pipe = dali_graph.build_decode_graph(lambda: [], batch_size=2, size=112, device=torch.device("cpu"))
    assert pipe.num_threads == dali_threads()


def test_an_epoch_left_midway_shuts_its_graph_down_at_once(jpeg_shards):
    """The dropped graph is no reference cycle: its pipeline goes with the last reference, not at a later
    garbage collection (which a forked DataLoader worker may run, and hang in DALI's shutdown)."""
    import gc
    import weakref

    from pipeline import dali_loader

    built = []
    real_build = dali_loader.build_train_graph
    gc.collect()
    gc.disable()
    try:
        dali_loader.build_train_graph = lambda *a, **k: built.append(real_build(*a, **k)) or built[-1]
        batches = iter(pipeline.build_loader(jpeg_shards, 24, seed=3, device="cpu", backend="dali"))  # a batch
        # size no other test uses: a graph built here, not one kept from before
        next(batches)
        pipe = weakref.ref(built.pop())
        batches.close()
        assert pipe() is None
    finally:
        dali_loader.build_train_graph = real_build
        gc.enable()
