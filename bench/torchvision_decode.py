"""The torchvision baseline: `torchvision.io.decode_jpeg` on a batch of JPEGs (nvJPEG on CUDA, libjpeg-turbo on
the CPU), then flip and normalize to the pipeline's float NCHW layout: what a user without DALI would write.

The only module that imports torchvision, an optional dependency (`pip install -e '.[gpu]'`). `unavailable()`
says why it cannot run here, by decoding one real image on the device: torchvision may be missing, fail to load
(PyPI's Linux wheel is built against torch's CUDA build and does not register its operators under the CPU
build), be too old for batched decoding, or have no nvJPEG. A stage leaves the contender out with that reason
(harness.Skipped) rather than failing.
"""
from __future__ import annotations

import itertools
import time
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from bench.harness import Sample
from bench.settings import BenchError

NAME = "torchvision_nvjpeg"
# What a torchvision that fails to import or to decode raises: ImportError (not installed), RuntimeError
# (operators that do not register against this torch build, a decoder without nvJPEG), OSError (a library
# it links missing), TypeError (a version before batched decode_jpeg, 0.19, refusing a list).
_FAILURES = (ImportError, RuntimeError, OSError, TypeError, AttributeError)


def describe(device: str) -> str:
    decoder = "nvJPEG (batched)" if device == "cuda" else "libjpeg-turbo on the CPU, the same code path"
    return f"torchvision.io.decode_jpeg, {decoder}, then flip + normalize to float NCHW on {device}"


def _version() -> str:
    import torchvision

    return getattr(torchvision, "__version__", "?")


def unavailable(device: str, probe: bytes) -> Optional[str]:
    """None when torchvision decodes `probe` (a JPEG of the benchmark's data) on `device`, else why not."""
    if device == "cuda" and not torch.cuda.is_available():
        return f"needs CUDA: torch {torch.__version__} finds no CUDA device"
    try:
        import torchvision.io  # noqa: F401
    except ImportError as err:
        return (f"torchvision is not installed ({err}); on a CUDA machine `pip install -e '.[gpu]'` brings the "
                f"one built for its torch")
    except _FAILURES as err:
        return (f"torchvision does not load with torch {torch.__version__} (a wheel built for another torch or "
                f"CUDA build?): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    try:
        out = decode_batch([to_tensor(probe)], torch.device(device), flip=None)
    except _FAILURES as err:
        return (f"torchvision {_version()} cannot decode a batch on {device}: {type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}")
    if out.dim() != 4 or out.shape[:2] != (1, 3):
        return f"torchvision {_version()} decoded the probe to shape {tuple(out.shape)}, expected [1, 3, H, W]"
    return None


def to_tensor(jpeg) -> torch.Tensor:
    """JPEG bytes (bytes or a uint8 array view) as the 1-D uint8 CPU tensor decode_jpeg takes (a copy, as a
    file read would give: the shards' views are read-only)."""
    return torch.from_numpy(np.frombuffer(jpeg, np.uint8).copy())


def decode_batch(data: Sequence[torch.Tensor], device: torch.device, flip: Optional[torch.Tensor]) -> torch.Tensor:
    """float32 [B,3,H,W] on `device`, RGB, (x - 127.5) / 127.5 (the pipeline's layout); image i mirrored where
    `flip[i]` (bool [B] on `device`). Every image has the same size (the dataset's)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    images = decode_jpeg(list(data), mode=ImageReadMode.RGB, device=device)  # B x [3,H,W] uint8 on device
    x = torch.stack(images)
    if flip is not None:
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    return x.float().sub_(127.5).div_(127.5)


def _synced(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_round(jpegs: Sequence[bytes], device: str, batch_size: int) -> Callable[[], Sample]:
    """The decode stage's contender: all `jpegs` (in memory) decoded in batches, normalized, no flip (as
    pipeline.decode_images)."""
    dev = torch.device(device)

    def run() -> Sample:
        start = time.perf_counter()
        n = 0
        for i in range(0, len(jpegs), batch_size):
            out = decode_batch([to_tensor(j) for j in jpegs[i:i + batch_size]], dev, flip=None)
            n += out.shape[0]
        _synced(dev)
        return Sample(n, time.perf_counter() - start)

    return run


def epoch_rounds(shards, device: str, batch_size: int) -> Callable[[], Sample]:
    """The pipeline stage's contender: rounds of one epoch each (epoch 0, 1, ...: a new seeded order each), the
    bytes read from the shards by key (pipeline.ShardSamples), labels to the device, a random flip per image
    (p = 0.5, as the pipeline), the tail that does not fill a batch dropped."""
    import pipeline

    samples = pipeline.ShardSamples(shards)
    if samples.num_samples < batch_size:
        raise BenchError(f"{shards}: {samples.num_samples} images do not fill one batch of {batch_size}; pass a "
                         f"smaller --batch-size")
    dev = torch.device(device)
    epochs = itertools.count()

    def run() -> Sample:
        epoch = next(epochs)
        order = np.random.default_rng(epoch).permutation(samples.num_samples)
        flips = torch.Generator().manual_seed(epoch)
        start = time.perf_counter()
        n = 0
        for i in range(0, len(order) - batch_size + 1, batch_size):
            keys = order[i:i + batch_size]
            labels = torch.from_numpy(samples.labels(keys)).to(dev, non_blocking=True)
            flip = (torch.rand(len(keys), generator=flips) < 0.5).to(dev, non_blocking=True)
            images = decode_batch([to_tensor(v) for v in samples.encoded(keys)], dev, flip)
            n += images.shape[0]
            assert labels.shape[0] == images.shape[0]
        _synced(dev)
        return Sample(n, time.perf_counter() - start)

    return run
