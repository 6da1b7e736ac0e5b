"""Stage decode: the pipeline's decoder alone, against the decode ceiling (libjpeg-turbo, one process per core).

The pipeline's decoder is measured through its public entry `pipeline.decode_images` (the DALI graph
that the evaluator uses: the same `fn.decoders.image` as the training graph, then a resize to the size
the image already has and the normalization, out to a float tensor on the device). Every contender
decodes the same JPEG bytes, already in memory. Where torchvision can decode on the device, a third
contender is torchvision's batched `decode_jpeg` (nvJPEG on CUDA) with the same normalization
(bench/torchvision_decode.py); where it cannot, the report says why it was left out.
"""
from __future__ import annotations

import time

from bench import torchvision_decode
from bench.ceiling import DecodeCeiling
from bench.data import BenchData
from bench.harness import Contender, Pair, Sample, Skipped, compare, measure
from bench.settings import Settings
from bench.stages.registry import register


def shard_jpegs(data: BenchData) -> list:
    """Every image's JPEG bytes, in key order."""
    import numpy as np
    import pipeline

    samples = pipeline.ShardSamples(data.jpeg_shards)
    return [v.tobytes() for v in samples.encoded(np.arange(samples.num_samples))]


def ceiling_processes() -> int:
    import pipeline

    return pipeline.cpu_threads()  # the cores this process may use (affinity aware)


def _decode_images(jpegs: list, settings: Settings) -> Sample:
    import pipeline
    import torch

    start = time.perf_counter()
    out = pipeline.decode_images(jpegs, device=settings.device, batch_size=settings.batch_size)
    if out.is_cuda:
        torch.cuda.synchronize(out.device)
    return Sample(out.shape[0], time.perf_counter() - start)


def torchvision_contender(stage: str, jpegs: list, settings: Settings, make_run) -> tuple:
    """([the torchvision contender], []) where torchvision decodes on the device, else ([], [Skipped])."""
    reason = torchvision_decode.unavailable(settings.device, jpegs[0])
    if reason is not None:
        return [], [Skipped(stage, torchvision_decode.NAME, reason)]
    return [Contender(torchvision_decode.NAME, torchvision_decode.describe(settings.device), make_run())], []


@register("decode")
def run(settings: Settings, data: BenchData) -> list:
    jpegs = shard_jpegs(data)
    extra, skipped = torchvision_contender(
        "decode", jpegs, settings,
        lambda: torchvision_decode.decode_round(jpegs, settings.device, settings.batch_size))
    with DecodeCeiling(jpegs, ceiling_processes()) as ceiling:
        contenders = [
            Contender("decode_images", f"pipeline.decode_images on {settings.device} (DALI decode, resize, "
                                       f"normalize)", lambda: _decode_images(jpegs, settings)),
            Contender("decode_ceiling", f"simplejpeg (libjpeg-turbo) decode alone, {ceiling.processes} "
                                        f"process(es)", ceiling.run),
        ] + extra
        measured = measure(contenders, repeats=settings.repeats, warmup=settings.warmup, label="decode",
                           progress=settings.progress)
    pairs = [Pair("decode_images", "decode_ceiling")] + [Pair("decode_images", c.name) for c in extra]
    return compare("decode", measured, pairs) + skipped
