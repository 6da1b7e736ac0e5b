"""decode_images: DALI's decode equals a reference decode; resizing, batching and errors."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import decode_images
from pipeline.device import PipelineDeviceError
from tests.pipeline.conftest import gpu_skip_reason


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def _reference(encoded: bytes) -> torch.Tensor:
    pixels = np.array(Image.open(io.BytesIO(encoded)).convert("RGB"))
    return (torch.from_numpy(pixels).permute(2, 0, 1).float() - 127.5) / 127.5


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    # Smooth images (a face is not white noise), so JPEG decoders agree closely.
    base = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    big = [np.asarray(Image.fromarray(b).resize((112, 112), Image.BILINEAR)) for b in base]
    return [_encode(p, "JPEG" if i % 2 == 0 else "PNG") for i, p in enumerate(big)]


def test_decode_matches_reference_across_batches(images):
    out = decode_images(images, batch_size=2, device="cpu")  # 3 batches, the last one short
    assert out.shape == (5, 3, 112, 112) and out.dtype == torch.float32 and out.device.type == "cpu"
    ref = torch.stack([_reference(e) for e in images])
    # Both sides are libjpeg-turbo here; allow a few grey levels for another build of it.
    assert (out - ref).abs().max().item() * 127.5 <= 4.0
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_decode_resizes_other_sizes(images):
    pixels = np.asarray(Image.open(io.BytesIO(images[0])).convert("RGB"))
    odd = _encode(np.asarray(Image.fromarray(pixels).resize((90, 130))), "PNG")
    out = decode_images([odd, images[1]], size=64, device="cpu")
    assert out.shape == (2, 3, 64, 64)
    ref = torch.nn.functional.interpolate(_reference(images[1])[None], size=(64, 64), mode="bilinear",
                                          antialias=True, align_corners=False)[0]
    assert (out[1] - ref).abs().mean().item() * 127.5 < 3.0


def test_decode_errors(images):
    with pytest.raises(ValueError, match="item 1"):
        decode_images([images[0], b""], device="cpu")
    with pytest.raises(ValueError, match="could not decode"):
        decode_images([b"this is not an image"], device="cpu")
    assert decode_images([], device="cpu").shape == (0, 3, 112, 112)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where no CUDA device exists")
def test_cuda_without_gpu_is_a_clear_error(images):
    with pytest.raises(PipelineDeviceError, match="no CUDA device"):
        decode_images(images, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(gpu_skip_reason() is not None, reason=str(gpu_skip_reason()))
def test_decode_on_gpu_matches_cpu(images):
    gpu = decode_images(images, device="cuda")
    assert gpu.device.type == "cuda"
    cpu = decode_images(images, device="cpu")
    # nvJPEG's IDCT differs slightly from libjpeg-turbo's.
    assert (gpu.cpu() - cpu).abs().max().item() * 127.5 <= 8.0
