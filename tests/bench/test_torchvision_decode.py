"""The torchvision_nvjpeg baseline (bench/torchvision_decode.py): the same float NCHW layout as the pipeline, left
out with a reason where torchvision cannot decode, and measured by the decode and pipeline stages where it can.

PyPI's torchvision is built against torch's CUDA build and does not load under the CPU build this suite runs
on, so the code path runs here against a stand-in `torchvision.io.decode_jpeg` (libjpeg-turbo through
Pillow, the same signature); the real torchvision is tested where it loads (on the CPU, and with nvJPEG in
the GPU test). No timing is asserted."""
import enum
import io
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

import pipeline
from bench import data as bench_data, torchvision_decode as tvd
from bench.harness import Result, Skipped
from bench.settings import Settings
from bench.stages import STAGES
from bench.stages.decode import shard_jpegs
from convert.synthetic import write_synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tv")
    write_synthetic(root / "rec", 3, 8, seed=2, fmt="rec")
    return bench_data.prepare(root / "rec", 0, root / "cache", progress=False)


@pytest.fixture
def stand_in(monkeypatch):
    """A torchvision whose io.decode_jpeg takes what the real one takes (a list of 1-D uint8 CPU tensors, a
    mode, a device) and gives what it gives (a list of [3,H,W] uint8 tensors on the device)."""
    calls = []

    class ImageReadMode(enum.Enum):
        RGB = "RGB"

    def decode_jpeg(data, mode, device):
        assert isinstance(data, list) and mode is ImageReadMode.RGB
        calls.append(len(data))
        out = []
        for t in data:
            assert t.dtype == torch.uint8 and t.dim() == 1 and t.device.type == "cpu"
            rgb = np.asarray(Image.open(io.BytesIO(t.numpy().tobytes())).convert("RGB"))
            out.append(torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous().to(device))
        return out

    tv, tv_io = types.ModuleType("torchvision"), types.ModuleType("torchvision.io")
    tv_io.decode_jpeg, tv_io.ImageReadMode, tv.io, tv.__version__ = decode_jpeg, ImageReadMode, tv_io, "stand-in"
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.io", tv_io)
    return calls


def _settings(tmp_path, **kw) -> Settings:
    base = dict(device="cpu", repeats=1, warmup=0, batch_size=8, step_batch_size=4, step_steps=1,
                student="mobilefacenet_s", teacher="iresnet_s", workers=1, scratch=tmp_path, progress=False)
    return Settings(**dict(base, **kw))


def test_the_layout_is_the_pipelines_and_flip_mirrors(data, stand_in):
    jpegs = shard_jpegs(data)[:6]
    assert tvd.unavailable("cpu", jpegs[0]) is None
    ours = tvd.decode_batch([tvd.to_tensor(j) for j in jpegs], torch.device("cpu"), flip=None)
    dali = pipeline.decode_images(jpegs, device="cpu")
    assert ours.dtype == torch.float32 and ours.shape == dali.shape == (6, 3, 112, 112)
    assert -1.0 <= float(ours.min()) and float(ours.max()) <= 1.0
    assert (ours - dali).abs().mean().item() * 127.5 < 2.0  # two libjpeg-turbo builds: off by a level at most
    flip = torch.tensor([True, False, True, False, False, False])
    flipped = tvd.decode_batch([tvd.to_tensor(j) for j in jpegs], torch.device("cpu"), flip)
    assert torch.equal(flipped[0], ours[0].flip(2)) and torch.equal(flipped[1], ours[1])


def test_an_epoch_decodes_every_full_batch_in_batches(data, stand_in):
    stand_in.clear()
    sample = tvd.epoch_rounds(data.jpeg_shards, "cpu", 5)()
    assert sample.images == data.images // 5 * 5 and stand_in == [5] * (data.images // 5)
    assert tvd.decode_round(shard_jpegs(data), "cpu", 10)().images == data.images


def test_the_decode_stage_measures_it_against_decode_batches(data, stand_in, tmp_path):
    out = STAGES["decode"](_settings(tmp_path), data)
    assert not [r for r in out if isinstance(r, Skipped)]
    pairs = {(r.name, r.baseline) for r in out if isinstance(r, Result)}
    assert pairs == {("decode_batches", "dali_plain_graph"), ("decode_images", "dali_plain_graph"),
                     ("decode_batches", "decode_ceiling"), ("decode_images", "decode_ceiling"),
                     ("decode_batches", "torchvision_nvjpeg")}
    tv = next(r for r in out if r.baseline == "torchvision_nvjpeg")
    assert "decode_jpeg" in tv.baseline_description and tv.baseline_img_per_s > 0


def test_without_torchvision_the_stage_runs_and_says_why_it_was_left_out(data, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    reason = tvd.unavailable("cpu", shard_jpegs(data)[0])
    assert reason.startswith("torchvision is not installed")
    out = STAGES["decode"](_settings(tmp_path), data)
    assert [(s.stage, s.name, s.reason) for s in out if isinstance(s, Skipped)] == [
        ("decode", "torchvision_nvjpeg", reason)]
    assert {(r.name, r.baseline) for r in out if isinstance(r, Result)} == {
        ("decode_batches", "dali_plain_graph"), ("decode_images", "dali_plain_graph"),
        ("decode_batches", "decode_ceiling"), ("decode_images", "decode_ceiling")}


def test_a_torchvision_that_does_not_load_or_decode_is_left_out_with_its_error(data, monkeypatch, tmp_path):
    jpeg = shard_jpegs(data)[0]
    broken = tmp_path / "site" / "torchvision"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.delitem(sys.modules, "torchvision.io", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    reason = tvd.unavailable("cpu", jpeg)
    assert reason.startswith("torchvision does not load") and "torchvision::nms does not exist" in reason

    def no_nvjpeg(data, mode, device):
        raise RuntimeError("Not compiled with GPU support")

    tv, tv_io = types.ModuleType("torchvision"), types.ModuleType("torchvision.io")
    tv_io.decode_jpeg, tv_io.ImageReadMode, tv.io = no_nvjpeg, types.SimpleNamespace(RGB=1), tv_io
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.io", tv_io)
    reason = tvd.unavailable("cpu", jpeg)
    assert "cannot decode a batch on cpu" in reason and "Not compiled with GPU support" in reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reason given where no CUDA device exists")
def test_cuda_without_cuda_is_a_reason_not_an_error(data, stand_in):
    assert tvd.unavailable("cuda", shard_jpegs(data)[0]).startswith("needs CUDA")


def _real_torchvision_or_skip(device: str, jpeg: bytes) -> None:
    reason = tvd.unavailable(device, jpeg)
    if reason is not None:
        pytest.skip(f"the real torchvision on {device}: {reason}")


def test_the_real_torchvision_on_the_cpu_matches_the_pipeline(data):
    jpegs = shard_jpegs(data)[:8]
    _real_torchvision_or_skip("cpu", jpegs[0])
    ours = tvd.decode_batch([tvd.to_tensor(j) for j in jpegs], torch.device("cpu"), flip=None)
    assert (ours - pipeline.decode_images(jpegs, device="cpu")).abs().mean().item() * 127.5 < 2.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: torch finds none here")
def test_nvjpeg_on_the_gpu_matches_the_pipeline(data):
    jpegs = shard_jpegs(data)[:16]
    _real_torchvision_or_skip("cuda", jpegs[0])
    ours = tvd.decode_batch([tvd.to_tensor(j) for j in jpegs], torch.device("cuda"), flip=None)
    assert ours.is_cuda and ours.shape == (16, 3, 112, 112)
    # nvJPEG's IDCT and upsampling differ slightly from libjpeg-turbo's (as in tests/pipeline/test_gpu.py).
    assert (ours.cpu() - pipeline.decode_images(jpegs, device="cpu")).abs().mean().item() * 127.5 < 2.0
    assert tvd.epoch_rounds(data.jpeg_shards, "cuda", 8)().images == data.images // 8 * 8
