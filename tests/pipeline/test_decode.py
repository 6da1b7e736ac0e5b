"""decode_images: DALI's decode equals a reference decode; resizing, batching and errors (an image that
does not decode is named by its position before DALI sees it, or found after DALI refused its batch)."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from common.errors import InputError
from pipeline import UndecodableImageError, dali_graph, decode_images
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
    with pytest.raises(ValueError, match=r"item 0 of 1 does not decode \(not a JPEG, PNG"):
        decode_images([b"this is not an image"], device="cpu")
    assert decode_images([], device="cpu").shape == (0, 3, 112, 112)


def cut_in_header(jpeg: bytes) -> bytes:
    """The JPEG cut halfway to its scan, inside its Huffman tables. Handed to DALI's CPU decoder in a batch
    of 32 or more, such bytes often end the process: nvImageCodec's JPEG parser prints "Invalid marker"
    and dies with SIGSEGV (exit 139); in smaller batches they fail the batch with a dump."""
    return jpeg[:jpeg.index(b"\xff\xda") // 2]


@pytest.mark.parametrize("bad, reason", [
    (b"", r"empty: 0 bytes"),
    (b"this is not an image", r"not a JPEG, PNG, BMP, TIFF, JPEG 2000, WebP or PNM image \(starts with b'this is '\)"),
    ("cut_in_header", r"JPEG header does not parse"),
    ("png_cut", r"PNG of 20 bytes without a complete IHDR chunk"),
    ("gif", r"a GIF image; the decoder takes JPEG, PNG"),
    (np.float32(1.0), r"expected encoded bytes, found float32"),
])
def test_undecodable_image_is_named_before_dali_sees_it(images, bad, reason, monkeypatch):
    def no_dali(*args, **kwargs):
        raise AssertionError("DALI was handed the images")

    monkeypatch.setattr(dali_graph, "build_decode_graph", no_dali)
    if bad == "cut_in_header":
        bad = cut_in_header(images[0])
    elif bad == "png_cut":
        bad = images[1][:20]
    elif bad == "gif":
        bad = _encode(np.zeros((8, 8, 3), np.uint8), "GIF")
    with pytest.raises(UndecodableImageError, match=r"^decode_images: item 3 of 5 does not decode \(" + reason) as info:
        decode_images([*images[:3], bad, images[4]], batch_size=2, device="cpu")
    assert isinstance(info.value, InputError) and info.value.item == 3 and "\n" not in str(info.value)


def test_image_dali_refuses_is_found_in_its_batch(images):
    cut = images[2][:len(images[2]) // 2]  # header intact, scan cut short: DALI's decoder refuses it
    with pytest.raises(UndecodableImageError, match=r"^decode_images: item 3 of 5 does not decode \(OSError: "
                                                    r"image file is truncated") as info:
        decode_images([*images[:3], cut, images[4]], batch_size=2, device="cpu")
    assert info.value.item == 3 and "\n" not in str(info.value)


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


def test_kept_graphs_give_what_a_fresh_graph_gives(images):
    """decode_images keeps one graph per (size, device, batch, resize): JPEGs of the target size skip the
    resize (exact either way), and a call after a refused batch or an early stop starts afresh."""
    from pipeline.decode import decode_batches

    jpegs = [images[0], images[2], images[4]]  # 112 x 112 JPEGs only: the graph without the resize
    plain = decode_images(jpegs, batch_size=2, device="cpu")
    mixed = decode_images(jpegs + [images[1]], batch_size=2, device="cpu")[:3]  # a PNG: the graph with it
    assert torch.equal(plain, mixed)
    with pytest.raises(UndecodableImageError):
        decode_images([*jpegs, images[2][:len(images[2]) // 2]], batch_size=2, device="cpu")
    batches = decode_batches(jpegs * 3, batch_size=2, device="cpu")
    next(batches)
    batches.close()  # stopped with batches in flight
    assert torch.equal(decode_images(jpegs, batch_size=2, device="cpu"), plain)
    parts = list(decode_batches(jpegs, batch_size=2, device="cpu"))
    assert [p.shape[0] for p in parts] == [2, 1] and torch.equal(torch.cat(parts), plain)
    # two calls read in turns (each takes a graph of its own) and a call inside another's loop
    firsts, seconds = decode_batches(jpegs, batch_size=2, device="cpu"), decode_batches(jpegs, batch_size=2, device="cpu")
    turns = [p for pair in zip(firsts, seconds) for p in pair]
    assert all(torch.equal(a, b) for a, b in zip(turns[::2], turns[1::2]))
    for part in decode_batches(jpegs, batch_size=2, device="cpu"):
        assert torch.equal(decode_images(jpegs, batch_size=2, device="cpu"), plain)


def test_one_mean_for_all_channels_normalizes_as_a_list_of_three():
    """dali_graph normalizes with a scalar mean and std (DALI's faster path): bit for bit what per-channel
    lists of the same values give, with and without the mirror."""
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    pixels = [np.random.default_rng(k).integers(0, 256, (112, 112, 3), dtype=np.uint8) for k in range(4)]
    pipe = Pipeline(batch_size=4, num_threads=1, device_id=None, exec_dynamic=True)
    with pipe:
        x = fn.external_source(source=lambda: pixels, batch=True, dtype=types.UINT8, layout="HWC")
        mirror = fn.external_source(source=lambda: np.array([0, 1, 0, 1], np.int32), batch=True)
        outs = [fn.crop_mirror_normalize(x, mirror=mirror, mean=mean, std=std, output_layout=layout,
                                         dtype=types.FLOAT)
                for layout in ("CHW", "HWC")
                for mean, std in ((dali_graph._MEAN, dali_graph._STD), ([127.5] * 3, [127.5] * 3))]
        pipe.set_outputs(*outs)
    pipe.build()
    chw, chw_list, hwc, hwc_list = (np.asarray(o.as_tensor()) for o in pipe.run())
    assert np.array_equal(chw, chw_list) and np.array_equal(hwc, hwc_list)
    mirrored = ((pixels[1][:, ::-1].astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)
    assert np.abs(chw[1] - mirrored).max() < 1e-6
