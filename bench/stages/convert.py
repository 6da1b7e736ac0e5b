"""Stage convert: `.rec` -> JPEG shards with `convert.convert_rec`, against copying the .rec (the physical limit).

Each round converts into a fresh directory (nothing to resume) and removes it afterwards. The copy is
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

from bench.data import BenchData
from bench.harness import Contender, Pair, compare, measure, timed
from bench.settings import Settings
from bench.stages.registry import register

GOAL = 1 / 3  # the project's target: conversion at a third of copy speed or better


def _convert(data: BenchData, out, workers: int) -> int:
    from convert import convert_rec

    shutil.rmtree(out, ignore_errors=True)
    try:
        return convert_rec(data.rec, out, workers=workers, progress=False).num_samples
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _validate(data: BenchData, workers: int) -> int:
    from convert.sources import RecSource
    from convert.validation import validate_source

    validated = validate_source(RecSource(data.rec), "jpeg", data.image_size, False, workers, progress=False)
    return int(validated.ok.sum())


def _copy(data: BenchData, out) -> int:
    os.makedirs(out, exist_ok=True)
    target = os.path.join(out, data.rec.name)
    try:
        shutil.copyfile(data.rec, target)
        with open(target, "rb+") as f:
            os.fsync(f.fileno())
        return data.images
    finally:
        shutil.rmtree(out, ignore_errors=True)


@register("convert")
def run(settings: Settings, data: BenchData) -> list:
    scratch = settings.scratch / "convert"
    contenders = [
        Contender("convert_rec", f"convert.convert_rec: validate, shuffle, write JPEG shards + .idx + manifest, "
                                 f"{settings.workers} process(es)",
                  timed(lambda: _convert(data, scratch / "shards", settings.workers))),
        Contender("validation_pass", f"convert's first pass alone: decode every image once, "
                                     f"{settings.workers} process(es)", timed(lambda: _validate(data, settings.workers))),
        Contender("copy", "copy the .rec file (and fsync)", timed(lambda: _copy(data, scratch / "copy"))),
    ]
    measured = measure(contenders, repeats=settings.repeats, warmup=settings.warmup, label="convert",
                       progress=settings.progress)
    return compare("convert", measured, [Pair("convert_rec", "copy", goal=GOAL), Pair("validation_pass", "copy"),
                                         Pair("convert_rec", "validation_pass")])
