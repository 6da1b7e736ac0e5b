"""Stage pipeline: whole epochs of batches on the device, against DALI's own webdataset reader, the
insightface-style baseline, the decode ceiling, and raw-encoded shards against JPEG shards.

Every contender delivers the same images as normalized float batches on `--device`: the project's
loader (`pipeline.build_loader`, DALI: decode, flip, normalize; also its torch backend), and the
baseline of bench/baseline_loader.py (DataLoader over the .rec, Pillow, one worker per core), and what a
user would pick instead of our loader: DALI's C++ `fn.readers.webdataset` over the same shards with the same
decode, mirror and normalize (bench/dali_native.py; a shuffle buffer, no exact order, no resume). A round
is one full epoch, loader construction included (a training run builds one loader per epoch), after
the warm-up has paid the first-time costs (page cache, DALI's first allocations). Where torchvision can
decode on the device, torchvision_nvjpeg is the loop a user without DALI would write: the shards' bytes
by key, torchvision's batched decode_jpeg (nvJPEG on CUDA), flip, normalize (bench/torchvision_decode.py);
where it cannot, the report says why it was left out.
"""
from __future__ import annotations

import functools
import itertools
import time
from typing import Callable

import torch

from bench.baseline_loader import epoch_loaders
from bench.ceiling import DecodeCeiling
from bench.data import BenchData
from bench.harness import Contender, Pair, Sample, compare, measure
from bench.settings import Settings
from bench import dali_native, torchvision_decode
from bench.stages.decode import ceiling_processes, shard_jpegs, torchvision_contender
from bench.stages.registry import register

# The project's speed targets: DALI's own webdataset reader (exact order at no cost), 4x the insightface-style
# loader, 0.8 of the decode ceiling, raw shards 3x JPEG.
GOAL_VS_NATIVE_READER = 1.0
GOAL_VS_BASELINE = 4.0
GOAL_VS_CEILING = 0.8
GOAL_RAW_VS_JPEG = 3.0


def _epoch(make_batches: Callable, device: torch.device) -> Sample:
    """Time one epoch; the images of each batch are on `device` when it is counted."""
    start = time.perf_counter()
    n = 0
    for images in make_batches():
        n += images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return Sample(n, time.perf_counter() - start)


def project_epochs(shards, settings: Settings, backend: str) -> Callable[[], Sample]:
    """Rounds of one `pipeline.build_loader(shards, ...)`, as a run reads it: epoch 0, 1, 2, ... (a new order
    each round); the loader is built by the first round."""
    import pipeline

    device = torch.device(settings.device)
    epochs = itertools.count()
    loader = functools.cache(lambda: pipeline.build_loader(shards, settings.batch_size, device=settings.device,
                                                           seed=0, backend=backend))

    def batches():
        return (batch.images for batch in loader().epoch(next(epochs)))

    return lambda: _epoch(batches, device)


def baseline_epochs(data: BenchData, settings: Settings) -> Callable[[], Sample]:
    """Rounds of the insightface-style loader; on a GPU each batch is copied there (pinned, async)."""
    device = torch.device(settings.device)
    loaders = epoch_loaders(data.rec, data.idx, data.jpeg_shards, settings.batch_size, workers=settings.workers,
                            pin_memory=device.type == "cuda")
    return lambda: _epoch(lambda: (images.to(device, non_blocking=True) for images, _, _ in loaders()), device)


@register("pipeline")
def run(settings: Settings, data: BenchData) -> list:
    dev = settings.device
    jpegs = shard_jpegs(data)
    extra, skipped = torchvision_contender(
        "pipeline", jpegs, settings,
        lambda: torchvision_decode.epoch_rounds(data.jpeg_shards, dev, settings.batch_size))
    with DecodeCeiling(jpegs, ceiling_processes()) as ceiling:
        contenders = [
            Contender("pipeline_jpeg", f"pipeline.build_loader, DALI on {dev}, JPEG shards",
                      project_epochs(data.jpeg_shards, settings, "dali")),
            Contender("pipeline_raw", f"pipeline.build_loader, DALI on {dev}, raw-encoded shards",
                      project_epochs(data.raw_shards, settings, "dali")),
            Contender("torch_backend_jpeg", f"pipeline.build_loader, backend='torch' to {dev}, JPEG shards",
                      project_epochs(data.jpeg_shards, settings, "torch")),
            Contender("insightface_baseline", f"DataLoader over the .rec, Pillow, flip, ToTensor-normalize, "
                                              f"{settings.workers} worker(s), to {dev}",
                      baseline_epochs(data, settings)),
            Contender("decode_ceiling", f"simplejpeg (libjpeg-turbo) decode alone, {ceiling.processes} "
                                        f"process(es)", ceiling.run),
            Contender(dali_native.READER_NAME, f"DALI's fn.readers.webdataset on the same shards (shuffle buffer "
                                               f"1024), decode, random mirror, normalize, on {dev}",
                      dali_native.reader_rounds(data.jpeg_shards, settings.batch_size, dev)),
        ] + extra
        measured = measure(contenders, repeats=settings.repeats, warmup=settings.warmup, label="pipeline",
                           progress=settings.progress)
    return compare("pipeline", measured, [
        Pair("pipeline_jpeg", dali_native.READER_NAME, goal=GOAL_VS_NATIVE_READER),
        Pair("pipeline_jpeg", "insightface_baseline", goal=GOAL_VS_BASELINE),
        Pair("pipeline_jpeg", "decode_ceiling", goal=GOAL_VS_CEILING),
        Pair("pipeline_raw", "pipeline_jpeg", goal=GOAL_RAW_VS_JPEG),
        Pair("torch_backend_jpeg", "insightface_baseline"),
    ] + [Pair("pipeline_jpeg", c.name) for c in extra]) + skipped
