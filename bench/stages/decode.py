"""Stage decode: the pipeline's decoder alone, against the decode ceiling (libjpeg-turbo, one process per core).

The pipeline's decoder is measured through its public entry `pipeline.decode_images` (the DALI graph
that the evaluator uses: the same `fn.decoders.image` as the training graph, then a resize to the size
the image already has and the normalization, out to a float tensor on the device). Both contenders
decode the same JPEG bytes, already in memory.
"""
from __future__ import annotations

import time

from bench.ceiling import DecodeCeiling
from bench.data import BenchData
from bench.harness import Contender, Pair, Sample, compare, measure
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


@register("decode")
def run(settings: Settings, data: BenchData) -> list:
    jpegs = shard_jpegs(data)
    with DecodeCeiling(jpegs, ceiling_processes()) as ceiling:
        contenders = [
            Contender("decode_images", f"pipeline.decode_images on {settings.device} (DALI decode, resize, "
                                       f"normalize)", lambda: _decode_images(jpegs, settings)),
            Contender("decode_ceiling", f"simplejpeg (libjpeg-turbo) decode alone, {ceiling.processes} "
                                        f"process(es)", ceiling.run),
        ]
        measured = measure(contenders, repeats=settings.repeats, warmup=settings.warmup, label="decode",
                           progress=settings.progress)
    return compare("decode", measured, [Pair("decode_images", "decode_ceiling")])
