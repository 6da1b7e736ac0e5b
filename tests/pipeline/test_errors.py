"""build_loader's errors name what is wrong and where: the file, and the sample's key in it."""
import builtins
import shutil

import numpy as np
import pytest
import torch

from common.errors import InputError
import pipeline
from tests.pipeline.conftest import encode, smooth_image, write_shards

BACKENDS = ["dali", "torch"]
SAMPLE_6 = r"/train-000001\.tar: sample 000000006\.jpg does not decode \("  # shard 1 holds keys 4..7


@pytest.fixture
def shards_copy(jpeg_shards, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(jpeg_shards, out)
    return out


def test_directory_without_manifest(tmp_path):
    with pytest.raises(pipeline.ShardError, match="no manifest.json"):
        pipeline.build_loader(tmp_path, 8, device="cpu")
    with pytest.raises(pipeline.ShardError, match="expected a directory"):
        pipeline.build_loader(tmp_path / "nowhere", 8, device="cpu")


def test_missing_shard(shards_copy):
    (shards_copy / "train-000001.tar").unlink()
    with pytest.raises(pipeline.ShardError, match=r"train-000001.tar: shard 1 .* is missing"):
        pipeline.build_loader(shards_copy, 8, device="cpu")


def test_shard_failing_its_size_check(shards_copy):
    with open(shards_copy / "train-000000.tar", "ab") as f:
        f.write(b"\0" * 512)
    with pytest.raises(pipeline.ShardError, match=r"train-000000.tar: shard 0 has \d+ bytes, manifest.json says"):
        pipeline.build_loader(shards_copy, 8, device="cpu")


def test_index_with_wrong_keys(shards_copy):
    idx = shards_copy / "train-000001.idx"
    idx.write_text(idx.read_text().replace("000000050.", "000000049.", 1))
    with pytest.raises(pipeline.ShardError, match="train-000001.idx: sample line 1: expected key 000000050"):
        pipeline.build_loader(shards_copy, 8, device="cpu")


def test_index_with_a_broken_line(shards_copy):
    idx = shards_copy / "train-000002.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(lines[:3] + [" ".join(lines[3].split()[:6])] + lines[4:]) + "\n")
    with pytest.raises(pipeline.ShardError, match="train-000002.idx: expected lines of two members"):
        pipeline.build_loader(shards_copy, 8, device="cpu")


def test_batch_larger_than_an_epoch(jpeg_shards):
    with pytest.raises(pipeline.BatchSizeError, match="epoch holds only 144 samples"):
        pipeline.build_loader(jpeg_shards, 100, world_size=2, device="cpu")


def test_bad_arguments(jpeg_shards):
    known = r"\['blur'\]; known: \['crop', 'low_res', 'photometric'\]"
    with pytest.raises(pipeline.UnknownAugmentationError, match=known):
        pipeline.build_loader(jpeg_shards, 8, augment={"blur": 0.2}, device="cpu")
    with pytest.raises(ValueError, match="probability"):
        pipeline.build_loader(jpeg_shards, 8, augment={"crop": 1.5}, device="cpu")
    with pytest.raises(ValueError, match=r"step: expected 0 <= step <= 18"):
        pipeline.build_loader(jpeg_shards, 8, device="cpu").epoch(0, start_step=19)
    with pytest.raises(ValueError, match="rank"):
        pipeline.build_loader(jpeg_shards, 8, rank=2, world_size=2, device="cpu")
    with pytest.raises(ValueError, match="backend"):
        pipeline.build_loader(jpeg_shards, 8, backend="ffcv", device="cpu")
    with pytest.raises(ValueError, match="dtype"):
        pipeline.build_loader(jpeg_shards, 8, dtype=torch.int8, device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where no CUDA device exists")
def test_cuda_without_a_gpu(jpeg_shards):
    with pytest.raises(pipeline.PipelineDeviceError, match="no CUDA device"):
        pipeline.build_loader(jpeg_shards, 8, device="cuda")


def test_auto_falls_back_to_torch_with_a_warning(jpeg_shards, monkeypatch):
    real_import = builtins.__import__

    def no_dali(name, *args, **kwargs):
        if name.startswith("nvidia.dali"):
            raise ImportError("No module named 'nvidia.dali' (simulated)")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dali)
    with pytest.warns(RuntimeWarning, match="falling back to the torch backend"):
        loader = pipeline.build_loader(jpeg_shards, 8, device="cpu")
    assert loader.backend == "torch"
    with pytest.raises(ImportError, match="backend='dali': DALI cannot be imported"):
        pipeline.build_loader(jpeg_shards, 8, device="cpu", backend="dali")


@pytest.fixture(scope="module")
def members():
    """12 JPEG members: three shards of four samples with batch 4 make an epoch of every sample."""
    return [encode(smooth_image(i), "JPEG") for i in range(12)]


def _damaged(jpeg: bytes, damage: str) -> bytes:
    return {"header": jpeg[:jpeg.index(b"\xff\xda") // 2],  # cut in its tables: DALI's parser can crash on it
            "scan": jpeg[:len(jpeg) // 2],  # header intact, scan cut short: DALI refuses the batch
            "text": b"not an image",
            "empty": b""}[damage]


def _one_line(error: Exception) -> bool:
    return isinstance(error, InputError) and "\n" not in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("damage", ["header", "scan", "text", "empty"])
def test_undecodable_member_names_its_shard_and_key(tmp_path, members, backend, damage):
    bad = list(members)
    bad[6] = _damaged(bad[6], damage)
    shards = write_shards(tmp_path / "shards", bad, [i % 3 for i in range(12)], num_classes=3)
    with pytest.raises(pipeline.ShardError, match=SAMPLE_6) as info:
        list(pipeline.build_loader(shards, 4, device="cpu", backend=backend))
    assert _one_line(info.value)


@pytest.mark.parametrize("damage", ["header", "scan"])
def test_shard_samples_name_an_undecodable_member(tmp_path, members, damage):
    bad = list(members)
    bad[6] = _damaged(bad[6], damage)
    samples = pipeline.ShardSamples(write_shards(tmp_path / "shards", bad, [i % 3 for i in range(12)], num_classes=3))
    assert samples.images(np.arange(4), device="cpu").shape == (4, 3, 112, 112)
    with pytest.raises(pipeline.ShardError, match=SAMPLE_6) as info:
        samples.images(np.arange(12), device="cpu", batch_size=4)
    assert _one_line(info.value)


def test_headers_are_checked_once_per_key_and_a_failure_is_not_remembered(tmp_path, members, monkeypatch):
    from pipeline import shard_index

    bad = list(members)
    bad[6] = _damaged(bad[6], "header")
    shards = write_shards(tmp_path / "shards", bad, [i % 3 for i in range(12)], num_classes=3)
    reader = shard_index.ShardReader(shard_index.ShardIndex.open(shards))
    checked = []
    monkeypatch.setattr(shard_index, "jpeg_size", lambda view: checked.append(view.size) or (112, 112))
    reader.checked_images(np.arange(4))
    reader.checked_images(np.arange(6))
    assert len(checked) == 6  # keys 0..3 once, then only 4 and 5
    monkeypatch.undo()
    for _ in range(2):  # the damaged key fails every time it is fed, and its batch's keys stay unchecked
        with pytest.raises(pipeline.ShardError, match=SAMPLE_6):
            reader.checked_images(np.arange(4, 8))


@pytest.mark.parametrize("damage", ["header", "scan"])
def test_a_failed_dali_graph_goes_while_its_error_lives(tmp_path, members, monkeypatch, damage):
    """An error from the loader's graph (our source's, or DALI's refusal) or from decode's does not hold the
    graph: it shuts down at once, though the error sits in a reference cycle (pytest.raises makes one), and
    no later garbage collection, maybe in a forked DataLoader worker, is left to shut it down."""
    import gc
    import weakref

    from pipeline import dali_loader, decode

    built = []

    def spy(build, pipe_of):
        def spied(*args, **kwargs):
            graph = build(*args, **kwargs)
            built.append(pipe_of(graph))
            return graph
        return spied

    monkeypatch.setattr(dali_loader, "build_train_graph", spy(dali_loader.build_train_graph, lambda pipe: pipe))
    monkeypatch.setattr(decode, "_build", spy(decode._build, lambda graph: graph[0]))  # (pipe, its queue)
    # header: our source's error, raised inside the graph's run (a label beyond the classes fails earlier,
    # when the labels table is opened, before any graph); scan: DALI's refusal
    labels, images = [i % 3 for i in range(12)], list(members)
    images[6] = _damaged(images[6], damage)
    shards = write_shards(tmp_path / "shards", images, labels, num_classes=3)
    gc.collect()
    gc.disable()
    try:
        with pytest.raises(pipeline.ShardError) as info:
            list(pipeline.build_loader(shards, 4, device="cpu", backend="dali"))
        graphs = [weakref.ref(built.pop())]
        if damage == "scan":
            with pytest.raises(pipeline.ShardError) as info:
                pipeline.ShardSamples(shards).images(np.arange(12), device="cpu", batch_size=5)  # a size of its own
            graphs.append(weakref.ref(built.pop()))
        assert info.value is not None and [g() for g in graphs] == [None] * len(graphs)
    finally:
        gc.enable()
