"""Stage convert: `.rec` -> JPEG shards with `convert.convert_rec`, against copying the .rec (the physical limit).

Each round converts into a fresh directory (nothing to resume) and removes it after its clock stops (removing
a written output is the benchmark's housekeeping, not the converter's or the copy's work). The copy is
written and fsync-ed, as the converter fsyncs every shard and the manifest, so both pay the same
durability; both read the source from the page cache after the warm-up.

A third contender times the converter's first pass alone (`convert.validation.validate_source`: every
image decoded once, as the converter must to validate it, in one process per core): no conversion can run
faster than it, so its ratio to the copy is the best that convert_rec could reach against the copy on this
machine.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from bench.data import BenchData
from bench.harness import Contender, Pair, Sample, compare, measure, timed
from bench.settings import Settings
from bench.stages.registry import register

GOAL = 1 / 3  # the project's target: conversion at a third of copy speed or better
GOAL_VS_VALIDATION = 0.8  # and the writing pass costs a quarter of the decoding pass or less


def _into(out: Path, work: Callable[[], int]) -> Callable[[], Sample]:
    """A round that times `work()` (which writes `out`) from an empty `out` to its return; `out` is removed
    before the clock starts and after it stops."""

    timed_work = timed(work)

    def run() -> Sample:
        shutil.rmtree(out, ignore_errors=True)
        try:
            return timed_work()
        finally:
            shutil.rmtree(out, ignore_errors=True)

    return run


def _convert(data: BenchData, out: Path, workers: int) -> int:
    from convert import convert_rec

    return convert_rec(data.rec, out, workers=workers, progress=False).num_samples


def _validate(data: BenchData, workers: int) -> int:
    from convert.sources import RecSource
    from convert.validation import validate_source

    validated = validate_source(RecSource(data.rec), "jpeg", data.image_size, False, workers, progress=False)
    return int(validated.ok.sum())


def _copy(data: BenchData, out: Path) -> int:
    os.makedirs(out, exist_ok=True)
    target = os.path.join(out, data.rec.name)
    shutil.copyfile(data.rec, target)
    with open(target, "rb+") as f:
        os.fsync(f.fileno())
    return data.images


@register("convert")
def run(settings: Settings, data: BenchData) -> list:
    scratch = settings.scratch / "convert"
    contenders = [
        Contender("convert_rec", f"convert.convert_rec: validate, shuffle, write JPEG shards + .idx + manifest, "
                                 f"{settings.workers} process(es)",
                  _into(scratch / "shards", lambda: _convert(data, scratch / "shards", settings.workers))),
        Contender("validation_pass", f"convert's first pass alone: decode every image once, "
                                     f"{settings.workers} process(es)", timed(lambda: _validate(data, settings.workers))),
        Contender("copy", "copy the .rec file (and fsync)", _into(scratch / "copy", lambda: _copy(data, scratch / "copy"))),
    ]
    measured = measure(contenders, repeats=settings.repeats, warmup=settings.warmup, label="convert",
                       progress=settings.progress)
    return compare("convert", measured, [Pair("convert_rec", "copy", goal=GOAL), Pair("validation_pass", "copy"),
                                         Pair("convert_rec", "validation_pass", goal=GOAL_VS_VALIDATION)])
