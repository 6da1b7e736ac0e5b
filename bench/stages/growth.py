"""Stage growth: how the converter's and the loader's time and memory grow with the dataset's records.

For each size N of `--growth-records` (default 100,000 and 1,000,000) a synthetic .rec of N records over
`--growth-classes` classes (default 85,742, MS1MV2's) is written (bench/growth_data.py), converted by
`convert.convert_rec` in a fresh process, and `pipeline.build_loader` is built on the result and yields its
first batch in another (bench/growth_job.py); each job's seconds and peak memory are recorded, and the
data is removed before the next size. A line through the points (least squares; exact for two)
extrapolates each figure to MS1MV2 (5.8M records) and WebFace42M (42M): f(N) = a + b * N. The exponent
log(f(N_max) / f(N_min)) / log(N_max / N_min) says how a figure grows: 1 is linear, 0 flat.

Not part of the default run (`python -m bench`): it takes minutes and gigabytes of disk at the default
sizes, so it runs when `--stages` names it. It measures one round per size: its figures are seconds, not
rates, and their growth is the point, not a ratio to a baseline.
"""
from __future__ import annotations

import math
import shutil
import sys
from dataclasses import dataclass

import numpy as np

from bench import growth_job
from bench.growth_data import write_growth_rec
from bench.settings import Settings
from bench.stages.registry import register

TARGETS = {"MS1MV2": 5_800_000, "WebFace42M": 42_000_000}
# What each point records: (field, what it is, unit).
FIGURES = (
    ("convert_s", "convert_rec: seconds", "s"),
    ("convert_anon_mib", "convert_rec: peak anonymous memory, process + workers", "MiB"),
    ("convert_rss_mib", "convert_rec: peak RSS of the converting process (mapped pages included)", "MiB"),
    ("convert_worker_rss_mib", "convert_rec: peak RSS of its largest worker", "MiB"),
    ("first_batch_s", "build_loader: seconds to the first batch", "s"),
    ("index_s", "build_loader: of which parsing the index", "s"),
    ("loader_anon_mib", "build_loader: peak anonymous memory to the first batch", "MiB"),
    ("loader_rss_mib", "build_loader: peak RSS to the first batch", "MiB"),
)


@dataclass(frozen=True)
class GrowthPoint:
    """The figures of one size (see FIGURES), and the .rec's bytes."""

    records: int
    classes: int
    rec_bytes: int
    convert_s: float
    convert_anon_mib: float
    convert_rss_mib: float
    convert_worker_rss_mib: float
    first_batch_s: float
    index_s: float
    loader_anon_mib: float
    loader_rss_mib: float


@dataclass(frozen=True)
class GrowthFit:
    """One figure's line through the points, f(N) = intercept + slope * N, its growth exponent between the
    smallest and the largest size, and its value extrapolated to each of TARGETS."""

    figure: str
    description: str
    unit: str
    intercept: float
    slope: float  # per record
    exponent: float
    extrapolated: dict  # name -> (records, value)


@dataclass(frozen=True)
class Growth:
    """What the stage returns (the JSON's `growth` block): the points in size order, what each figure is
    (FIGURES), and a fit per figure (none for a single size)."""

    points: tuple
    figures: tuple
    fits: tuple
    workers: int
    batch_size: int
    device: str


def fit(points, figure: str, description: str, unit: str) -> GrowthFit:
    n = np.array([p.records for p in points], float)
    y = np.array([getattr(p, figure) for p in points], float)
    slope, intercept = np.polyfit(n, y, 1)
    lo, hi = y[0], y[-1]
    exponent = math.log(hi / lo) / math.log(n[-1] / n[0]) if lo > 0 and hi > 0 else float("nan")
    return GrowthFit(figure, description, unit, float(intercept), float(slope), exponent,
                     {name: (size, float(intercept + slope * size)) for name, size in TARGETS.items()})


def measure_size(settings: Settings, records: int, classes: int) -> GrowthPoint:
    """Write, convert and load one size in settings.scratch/growth-N, removed afterwards."""
    work = settings.scratch / f"growth-{records}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        if settings.progress:
            print(f"bench: growth: writing a .rec of {records} records, {classes} classes", file=sys.stderr)
        rec, _ = write_growth_rec(work / "rec", records, classes)
        rec_bytes = rec.stat().st_size
        shards = work / "shards"
        if settings.progress:
            print(f"bench: growth: converting {records} records", file=sys.stderr)
        conv = growth_job.run("convert", [rec, "--out", shards, "--workers", settings.workers])
        rec.unlink()  # the loader reads the shards alone; half the disk for the rest of this size
        if settings.progress:
            print(f"bench: growth: first batch of {records} records", file=sys.stderr)
        load = growth_job.run("loader", [shards, "--batch-size", settings.batch_size, "--device", settings.device])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return GrowthPoint(records=records, classes=classes, rec_bytes=rec_bytes, convert_s=conv.seconds,
                       convert_anon_mib=conv.peak_anon_mib, convert_rss_mib=conv.peak_rss_mib,
                       convert_worker_rss_mib=conv.worker_peak_rss_mib, first_batch_s=load.seconds, index_s=load.split,
                       loader_anon_mib=load.peak_anon_mib, loader_rss_mib=load.peak_rss_mib)


@register("growth")
def run(settings: Settings, data) -> list:
    """`data` is unused: each size writes its own .rec."""
    points = tuple(measure_size(settings, n, min(settings.growth_classes, n)) for n in settings.growth_records)
    fits = tuple(fit(points, *figure) for figure in FIGURES) if len(points) >= 2 else ()
    return [Growth(points, FIGURES, fits, settings.workers, settings.batch_size, settings.device)]
