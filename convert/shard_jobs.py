"""Second conversion pass: write the planned shards, one process per shard in parallel, in-process when small.

Each shard is independent (its samples, keys and labels are fixed by the plan), so writing them
in parallel gives the same bytes as writing them one after another. Workers never import
webdataset or torch: only numpy, simplejpeg, Pillow and this package.
"""
from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from convert.image_check import to_member
from convert.manifest import ShardRecord
from convert.shard_writer import ShardWriter
from convert.worker_pool import shared_counter, spawn_pool, worth_spawning

_SOURCE = None  # the source, in each worker process
_REPORT: Callable[[int], None] = lambda n: None  # counts samples written (to the bar, or a shared counter)
_REPORT_EVERY = 256
# Writing a sample costs ~20 us, starting the pool ~0.3 s: a pool pays off once it takes this many samples
# off the longest path (a shard of 29,300 samples and one of 700 gain nothing from two processes).
MIN_PARALLEL_WRITES = 16384


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: its name, its first key, the source index and label of each sample, in order."""

    out: str
    name: str
    first_key: int
    indices: np.ndarray  # int64 [n] source item of each sample
    labels: np.ndarray  # int64 [n] contiguous label of each sample
    transcode: bool  # whether any member differs from the source bytes (decode / re-encode)
    encoding: str
    ext: str
    size: int
    resize: bool
    max_pixels: int


def _init(source, report: Callable[[int], None]) -> None:
    global _SOURCE, _REPORT
    _SOURCE, _REPORT = source, report


def _init_worker(source, counter) -> None:
    def report(n: int) -> None:
        with counter.get_lock():
            counter.value += n

    _init(source, report)


def write_shard(job: ShardJob) -> ShardRecord:
    """Write one shard (tar + idx, renamed into place when complete); returns its manifest record."""
    writer = ShardWriter(job.out, job.name, job.ext)
    try:
        for j, (i, label) in enumerate(zip(job.indices.tolist(), job.labels.tolist())):
            data = _SOURCE.image(i)
            if job.transcode:
                data = to_member(bytes(data), job.encoding, job.size, job.resize, _SOURCE.where(i), job.max_pixels)
            writer.write(job.first_key + j, data, label)
            if (j + 1) % _REPORT_EVERY == 0:
                _REPORT(_REPORT_EVERY)
    except BaseException:
        writer.abort()
        raise
    _REPORT(len(job.indices) % _REPORT_EVERY)
    return writer.close()


def _write_numbered(numbered: tuple) -> tuple:
    k, job = numbered
    return k, write_shard(job)


def pool_saving(sizes: list, workers: int) -> int:
    """Samples that `workers` processes take off the writing pass's longest path, for shards of `sizes`
    samples: all of them but the largest shard, or but an equal share, whichever is larger."""
    total = sum(sizes)
    return total - max(max(sizes, default=0), -(-total // max(1, workers)))


def run_jobs(source, jobs: list, workers: int, on_progress: Callable[[int], None]) -> Iterator[tuple]:
    """Yield (job, record) as each shard completes; on_progress(samples) is called as samples are written."""
    saving = pool_saving([len(j.indices) for j in jobs], workers)
    if not worth_spawning(workers, len(jobs), saving, MIN_PARALLEL_WRITES):
        _init(source, on_progress)
        for job in jobs:
            yield job, write_shard(job)
        return
    progress = shared_counter()
    seen = 0
    with spawn_pool(min(workers, len(jobs)), _init_worker, (source, progress)) as pool:
        finished = pool.imap_unordered(_write_numbered, enumerate(jobs))
        for _ in jobs:
            while True:  # the progress bar moves every 0.1 s; a finished shard is yielded at once
                try:
                    k, record = finished.next(timeout=0.1)  # re-raises a worker's error here
                    break
                except multiprocessing.TimeoutError:
                    pass
                finally:
                    now = progress.value
                    on_progress(now - seen)
                    seen = now
            yield jobs[k], record
