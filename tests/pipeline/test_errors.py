"""build_loader's errors name what is wrong and where."""
import builtins
import shutil

import pytest
import torch

import pipeline


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
        pipeline.build_loader(jpeg_shards, 8, step=19, device="cpu")
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
