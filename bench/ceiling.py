"""The decode ceiling: libjpeg-turbo (simplejpeg) decoding the JPEG bytes alone, one process per core.

The bytes are handed to each process once, when the pool starts; a round times only the decoding
(every process decodes its share, the round ends when the slowest is done), so no loader can beat it
on this machine without a faster decoder.
"""
from __future__ import annotations

import time
from typing import Sequence

import simplejpeg

from bench.harness import Sample
from convert.worker_pool import spawn_pool

_JPEGS: Sequence[bytes] = ()


def _load(jpegs: Sequence[bytes]) -> None:
    global _JPEGS
    _JPEGS = jpegs


def _decode_share(part: tuple) -> int:
    k, parts = part
    n = 0
    for data in _JPEGS[k::parts]:
        simplejpeg.decode_jpeg(data, colorspace="RGB")
        n += 1
    return n


class DecodeCeiling:
    """A pool of `processes` decoders holding `jpegs`; `run()` decodes them all once. Use as a context
    manager (the pool's processes end on exit)."""

    def __init__(self, jpegs: Sequence[bytes], processes: int) -> None:
        self.jpegs, self.processes = list(jpegs), processes
        self._pool = None

    def __enter__(self) -> "DecodeCeiling":
        self._pool = spawn_pool(self.processes, _load, (self.jpegs,))  # the parent runs DALI and torch threads
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def run(self) -> Sample:
        if self._pool is None:
            raise RuntimeError("DecodeCeiling.run: use it inside `with DecodeCeiling(...)`")
        parts = [(k, self.processes) for k in range(self.processes)]
        start = time.perf_counter()
        images = sum(self._pool.map(_decode_share, parts, chunksize=1))
        return Sample(images, time.perf_counter() - start)
