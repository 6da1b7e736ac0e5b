"""DALI as a user would write it without this project: the baselines that measure what our DALI code adds or costs.

- `reader_rounds`: DALI's own C++ `fn.readers.webdataset` over the same shards and their `.idx` files
  (buffer shuffle, no exact order, no mid-epoch resume), then the graph of DALI's examples: decode,
  random mirror, normalize to float CHW (the same operators as pipeline.build_loader's graph). The labels
  come out as the `.cls` members' bytes, left unparsed (less work than our loader, which hands int64 labels).
  The pipeline is built once and runs on across rounds, as a training script would keep it.
- `plain_decode_rounds`: a plain decode + normalize graph over encoded images in memory (external source,
  built once), each batch handed out as a torch tensor: what pipeline.decode_images does without its checks.

Both use the thread count of our graphs (pipeline.device.dali_threads) and the dynamic executor, with DALI's default
prefetch depth. Every round starts and ends with nothing in flight, as our loader's epochs and decode calls
do, so no round's work spills outside its timing (onto the next contender) or is done before it starts.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline

from bench.harness import Sample
from convert.manifest import Manifest
from pipeline.dali_graph import to_torch  # the hand-over to torch ours uses: only the graphs differ
from pipeline.device import dali_threads

READER_NAME = "dali_readers_webdataset"
PLAIN_NAME = "dali_plain_graph"
_PREFETCH = 2  # DALI's default (a user's choice; a deeper queue did not speed the reader up here)
_MEAN = [127.5, 127.5, 127.5]  # per channel, as DALI's examples write it
_STD = [127.5, 127.5, 127.5]


def _pipeline(batch_size: int, device: torch.device) -> Pipeline:
    return Pipeline(batch_size=batch_size, num_threads=dali_threads(),
                    device_id=(device.index or 0) if device.type == "cuda" else None,
                    prefetch_queue_depth=_PREFETCH, exec_dynamic=True)


def _normalized(encoded, device: torch.device, mirror=None):
    on_gpu = device.type == "cuda"
    images = fn.decoders.image(encoded, device="mixed" if on_gpu else "cpu", output_type=types.RGB)
    extra = {} if mirror is None else {"mirror": mirror}
    return fn.crop_mirror_normalize(images, mean=_MEAN, std=_STD, output_layout="CHW", dtype=types.FLOAT, **extra)


def reader_rounds(shards: Path, batch_size: int, device: str, shuffle_buffer: int = 1024) -> Callable[[], Sample]:
    """Rounds of an epoch's worth of batches (num_samples // batch_size) from DALI's webdataset reader.

    A reader never ends its input, so left to `run()` the pipeline would go on decoding the next round's
    first batches after a round's timing stops: work done outside the timed window (free for the next
    round, a load on whichever contender runs next). Each round therefore schedules exactly its own
    batches (`schedule_run`, at most the prefetch depth ahead) and consumes them all (`outputs`): it starts
    and ends with nothing in flight, as an epoch of pipeline.build_loader does."""
    dev = torch.device(device)
    shards = Path(shards)
    manifest = Manifest.load(shards)
    tars = [str(shards / rec.name) for rec in manifest.shards]
    pipe = _pipeline(batch_size, dev)
    with pipe:
        jpegs, labels = fn.readers.webdataset(paths=tars, index_paths=[t[:-len(".tar")] + ".idx" for t in tars],
                                              ext=["jpg", "cls"], random_shuffle=True, initial_fill=shuffle_buffer,
                                              missing_component_behavior="error", name="reader")
        pipe.set_outputs(_normalized(jpegs, dev, mirror=fn.random.coin_flip()), labels)
    pipe.build()
    depth = _PREFETCH
    pipe.schedule_run()  # the first call schedules `depth` batches at once: consume them, untimed
    for _ in range(depth):
        pipe.outputs()
    steps = manifest.num_samples // batch_size

    def one_round() -> Sample:
        start = time.perf_counter()
        scheduled = n = 0
        while scheduled < min(depth, steps):
            pipe.schedule_run()
            scheduled += 1
        for _ in range(steps):
            n += to_torch(pipe.outputs()[0], dev, torch.float32).shape[0]
            if scheduled < steps:
                pipe.schedule_run()
                scheduled += 1
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return Sample(n, time.perf_counter() - start)

    return one_round


def plain_decode_rounds(jpegs: list, batch_size: int, device: str) -> Callable[[], Sample]:
    """Rounds of every image in `jpegs` through a plain decode + normalize graph, batch by batch: the
    source ends each round's input (StopIteration) and the graph is reset for the next, as a user decoding
    a set of images with DALI would do."""
    dev = torch.device(device)
    arrays = [np.frombuffer(j, np.uint8) for j in jpegs]
    starts: list = []

    def source() -> list:
        if not starts:
            raise StopIteration
        s = starts.pop()
        return arrays[s:s + batch_size]

    pipe = _pipeline(batch_size, dev)
    with pipe:
        encoded = fn.external_source(source=source, batch=True, dtype=types.UINT8)
        pipe.set_outputs(_normalized(encoded, dev))
    pipe.build()

    def one_round() -> Sample:
        starts[:] = reversed(range(0, len(arrays), batch_size))
        start = time.perf_counter()
        n = 0
        while True:
            try:
                (images,) = pipe.run()
            except StopIteration:
                break
            n += to_torch(images, dev, torch.float32).shape[0]
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - start
        pipe.reset()
        return Sample(n, seconds)

    return one_round
