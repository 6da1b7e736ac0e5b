"""The GPU path: the mixed decoder and the Batch contract on CUDA (skipped where there is no GPU)."""
import pytest
import torch

import pipeline
from tests.pipeline.conftest import gpu_skip_reason

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu_skip_reason() is not None, reason=str(gpu_skip_reason()))]


def test_gpu_batches_match_cpu(jpeg_shards):
    gpu = list(pipeline.build_loader(jpeg_shards, 16, device="cuda", backend="dali", with_flip=True, seed=3))
    cpu = list(pipeline.build_loader(jpeg_shards, 16, device="cpu", backend="dali", with_flip=True, seed=3))
    for g, c in zip(gpu, cpu):
        assert g.images.device.type == "cuda" and g.labels.device.type == "cuda" and g.index.is_cuda
        assert torch.equal(g.index.cpu(), c.index) and torch.equal(g.flipped.cpu(), c.flipped)
        # nvJPEG's IDCT and upsampling differ slightly from libjpeg-turbo's.
        assert (g.images.cpu() - c.images).abs().mean().item() * 127.5 < 2.0


def test_gpu_raw_bf16_and_augment(raw_shards):
    batch = next(iter(pipeline.build_loader(raw_shards, 16, device="cuda", dtype=torch.bfloat16,
                                            augment={"crop": 0.3, "low_res": 0.3, "photometric": 0.3})))
    assert batch.images.is_cuda and batch.images.dtype == torch.bfloat16 and batch.images.shape == (16, 3, 112, 112)
    assert torch.isfinite(batch.images.float()).all()


def test_gpu_resume_and_ranks(jpeg_shards):
    full = list(pipeline.build_loader(jpeg_shards, 12, device="cuda", seed=7, rank=1, world_size=2,
                                      with_flip=True).epoch(4))
    rest = list(pipeline.build_loader(jpeg_shards, 12, device="cuda", seed=7, rank=1, world_size=2,
                                      with_flip=True).epoch(4, start_step=2))
    assert len(rest) == len(full) - 2
    for a, b in zip(full[2:], rest):
        assert torch.equal(a.index, b.index) and torch.equal(a.flipped, b.flipped)
        assert torch.equal(a.images, b.images)
    other = list(pipeline.build_loader(jpeg_shards, 12, device="cuda", seed=7, rank=0, world_size=2).epoch(4))
    assert len(other) == len(full)
    assert not set(torch.cat([b.index for b in full]).tolist()) & set(torch.cat([b.index for b in other]).tolist())


def test_gpu_decoder_is_nvjpeg_and_hw_decoder_load_applies(jpeg_shards):
    loader = pipeline.build_loader(jpeg_shards, 16, device="cuda", backend="dali", seed=3)
    assert loader.decoder.startswith("nvJPEG "), loader.decoder  # hardware where the GPU has NVJPG engines
    batches = {load: list(pipeline.build_loader(jpeg_shards, 16, device="cuda", backend="dali", seed=3,
                                                hw_decoder_load=load)) for load in (0.0, 1.0)}
    for a, b in zip(batches[0.0], batches[1.0]):  # all on nvJPEG's CUDA decoder, or all on the hardware one
        assert torch.equal(a.index, b.index)
        assert (a.images - b.images).abs().mean().item() * 127.5 < 2.0


def test_gpu_nhwc_layout_and_host_fields(jpeg_shards):
    nchw = list(pipeline.build_loader(jpeg_shards, 16, device="cuda", seed=5, with_flip=True))
    nhwc = list(pipeline.build_loader(jpeg_shards, 16, device="cuda", seed=5, with_flip=True, layout="NHWC"))
    for a, b in zip(nchw, nhwc):
        assert b.images.is_cuda and b.images.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a.images, b.images)
        assert (b.keys == a.index.cpu().numpy()).all() and (b.flips == b.flipped.cpu().numpy()).all()
        assert (b.global_labels == b.labels.cpu().numpy()).all()  # one rank: the global batch is its own
