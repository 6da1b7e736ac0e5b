"""Stage read: every sample's bytes out of the shards (no decode), against the same images out of the .rec.

Shards are read as the pipeline reads them (pipeline.ShardSamples over the memory-mapped
tars, located by the DALI .idx files, image and label per sample), the .rec as insightface reads it
(convert.recordio.RecordReader, one record by key, header unpacked). Both visit their samples in a
seeded random order (a training epoch's access pattern) and copy each image's bytes out, so that the
mapped pages are really read.
"""
from __future__ import annotations

import itertools

import numpy as np

from bench.data import BenchData
from bench.harness import Contender, Pair, compare, measure, timed
from bench.settings import Settings
from bench.stages.registry import register

CHUNK = 256  # keys per ShardReader call: a batch, as the loader asks for them


def _read_shards(data: BenchData, seed: int) -> int:
    import pipeline

    samples = pipeline.ShardSamples(data.jpeg_shards)
    order = np.random.default_rng(seed).permutation(samples.num_samples)
    for start in range(0, len(order), CHUNK):
        keys = order[start:start + CHUNK]
        samples.labels(keys)
        for view in samples.encoded(keys):
            view.tobytes()
    return samples.num_samples


def _read_rec(data: BenchData, seed: int) -> int:
    from convert.rec_layout import image_keys
    from convert.recordio import RecordReader, unpack

    with RecordReader(data.rec, data.idx) as reader:
        keys = image_keys(reader)
        order = np.random.default_rng(seed).permutation(len(keys))
        for i in order.tolist():
            unpack(reader.read(keys[i]))  # the header (label) and a copy of the image bytes
    return len(keys)


@register("read")
def run(settings: Settings, data: BenchData) -> list:
    rounds, rec_rounds = itertools.count(), itertools.count()  # a new order every round, alike for both
    contenders = [
        Contender("shards", "pipeline.ShardSamples: mmap'd tars by .idx offset, image + label, random order",
                  timed(lambda: _read_shards(data, next(rounds)))),
        Contender("rec", "convert.recordio.RecordReader: .rec by .idx key, unpack, random order",
                  timed(lambda: _read_rec(data, next(rec_rounds)))),
    ]
    measured = measure(contenders, repeats=settings.repeats, warmup=settings.warmup, label="read",
                       progress=settings.progress)
    return compare("read", measured, [Pair("shards", "rec")])
