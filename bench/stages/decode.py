"""Stage decode: the pipeline's decoder alone, against a plain DALI graph and the decode ceiling (libjpeg-turbo,
one process per core).

The pipeline's decoder is measured through its public entries: `pipeline.decode_batches` (the DALI graph
that the evaluator uses: the same `fn.decoders.image` as the training graph, the header checks, the
normalization, out to float tensors on the device, batch by batch) and `pipeline.decode_images` (the same,
joined into one tensor). The plain graph (bench/dali_native.py) is what a user would write with DALI alone:
decode and normalize, no checks. Every contender decodes the same JPEG bytes, already in memory. Where torchvision can decode on the device, a third
contender is torchvision's batched `decode_jpeg` (nvJPEG on CUDA) with the same normalization
(bench/torchvision_decode.py); where it cannot, the report says why it was left out.
"""
from __future__ import annotations

import time

from bench import dali_native, torchvision_decode
from bench.ceiling import DecodeCeiling
from bench.data import BenchData
from bench.harness import Contender, Pair, Sample, Skipped, compare, measure
from bench.settings import Settings
from bench.stages.registry import register

GOAL_VS_PLAIN_GRAPH = 0.9  # our checks and kept graphs may cost at most a tenth of a plain DALI graph


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


def _decode_batches(jpegs: list, settings: Settings) -> Sample:
    import pipeline
    import torch

    start = time.perf_counter()
    n = 0
    for part in pipeline.decode_batches(jpegs, device=settings.device, batch_size=settings.batch_size):
        n += part.shape[0]
    if settings.device == "cuda":
        torch.cuda.synchronize()
    return Sample(n, time.perf_counter() - start)


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
            Contender("decode_batches", f"pipeline.decode_batches on {settings.device} (DALI decode, normalize; "
                                        f"batches as the evaluator reads them)", lambda: _decode_batches(jpegs, settings)),
            Contender("decode_images", f"pipeline.decode_images on {settings.device} (decode_batches joined into "
                                       f"one tensor)", lambda: _decode_images(jpegs, settings)),
            Contender(dali_native.PLAIN_NAME, f"a plain DALI graph on {settings.device}: external source, decode, "
                                              f"normalize, built once", dali_native.plain_decode_rounds(
                                                  jpegs, settings.batch_size, settings.device)),
            Contender("decode_ceiling", f"simplejpeg (libjpeg-turbo) decode alone, {ceiling.processes} "
                                        f"process(es)", ceiling.run),
        ] + extra
        measured = measure(contenders, repeats=settings.repeats, warmup=settings.warmup, label="decode",
                           progress=settings.progress)
    pairs = [Pair("decode_batches", dali_native.PLAIN_NAME, goal=GOAL_VS_PLAIN_GRAPH),
             Pair("decode_images", dali_native.PLAIN_NAME), Pair("decode_batches", "decode_ceiling"),
             Pair("decode_images", "decode_ceiling")] + [Pair("decode_batches", c.name) for c in extra]
    return compare("decode", measured, pairs) + skipped
