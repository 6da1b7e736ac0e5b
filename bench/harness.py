"""Interleaved timing: warm every contender up, then run them in turn (A B A B ...), and compare pairs.

Contenders of one stage are measured in the same rounds, so that a change in machine load (other
processes, thermal state, the page cache) falls on all of them alike; each reports the median and the
spread (min, max) of its rounds, and a pair's ratio is the ratio of the medians.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from tqdm import tqdm


@dataclass(frozen=True)
class Sample:
    """One timed round of a contender: images processed in `seconds`; `wait_seconds` is the part of it
    a consumer spent waiting for its next batch (the step stage), None where that means nothing."""

    images: int
    seconds: float
    wait_seconds: Optional[float] = None

    def __post_init__(self) -> None:
        if self.images < 1 or not self.seconds > 0:
            raise ValueError(f"Sample: expected images >= 1 and seconds > 0, found {self.images}, {self.seconds}")
        if self.wait_seconds is not None and not 0 <= self.wait_seconds <= self.seconds * 1.001:
            raise ValueError(f"Sample: wait_seconds must lie in [0, seconds={self.seconds}], found {self.wait_seconds}")

    @property
    def rate(self) -> float:
        return self.images / self.seconds


@dataclass(frozen=True)
class Contender:
    """A named way of doing a stage's work; `run()` does one round and says how long its work took."""

    name: str
    description: str
    run: Callable[[], Sample]


def timed(work: Callable[[], int]) -> Callable[[], Sample]:
    """A contender's `run` from a function that returns the images it processed: the whole call is timed."""

    def run() -> Sample:
        start = time.perf_counter()
        images = work()
        return Sample(images, time.perf_counter() - start)

    return run


@dataclass(frozen=True)
class Measurement:
    """All timed rounds of one contender."""

    name: str
    description: str
    samples: tuple

    @property
    def rates(self) -> list:
        return [s.rate for s in self.samples]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    @property
    def spread(self) -> tuple:
        return min(self.rates), max(self.rates)

    @property
    def data_wait(self) -> Optional[float]:
        """Median fraction of a round spent waiting for data; None when the contender does not say."""
        if any(s.wait_seconds is None for s in self.samples):
            return None
        return statistics.median(s.wait_seconds / s.seconds for s in self.samples)


def measure(contenders: Sequence[Contender], *, repeats: int, warmup: int, label: str,
            progress: bool = True) -> dict:
    """`warmup` untimed rounds, then `repeats` timed rounds, each round running every contender once in
    turn. Returns {name: Measurement}."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"measure: expected repeats >= 1 and warmup >= 0, found {repeats}, {warmup}")
    names = [c.name for c in contenders]
    if len(set(names)) != len(names):
        raise ValueError(f"measure: contender names must be unique, found {names}")
    samples: dict = {c.name: [] for c in contenders}
    total = (warmup + repeats) * len(contenders)
    with tqdm(total=total, desc=label, unit="run", disable=not progress, leave=False) as bar:
        for round_ in range(warmup + repeats):
            for c in contenders:
                bar.set_postfix_str(f"{c.name} ({'warm-up' if round_ < warmup else f'round {round_ - warmup + 1}'})")
                sample = c.run()
                if round_ >= warmup:
                    samples[c.name].append(sample)
                bar.update(1)
    return {c.name: Measurement(c.name, c.description, tuple(samples[c.name])) for c in contenders}


@dataclass(frozen=True)
class Pair:
    """A comparison to report: contender `name` against contender `baseline`, with the goal for their
    ratio where the project set one."""

    name: str
    baseline: str
    goal: Optional[float] = None


@dataclass(frozen=True)
class Result:
    """One reported pair (the JSON's `results` entries are these fields)."""

    stage: str
    name: str
    description: str
    img_per_s: float
    spread: tuple
    baseline: str
    baseline_description: str
    baseline_img_per_s: float
    baseline_spread: tuple
    ratio: float
    goal: Optional[float]
    repeats: int
    data_wait: Optional[float] = None
    baseline_data_wait: Optional[float] = None

    def __post_init__(self) -> None:
        for key in ("img_per_s", "baseline_img_per_s", "ratio"):
            if not getattr(self, key) > 0:
                raise ValueError(f"Result {self.stage}/{self.name}: {key} must be > 0, found {getattr(self, key)}")


@dataclass(frozen=True)
class Skipped:
    """A contender a stage left out on this machine, and why (a missing optional dependency or device): the
    stage still runs, and the report says what is missing (the JSON's `skipped` entries are these fields)."""

    stage: str
    name: str
    reason: str

    def __post_init__(self) -> None:
        if not self.reason.strip():
            raise ValueError(f"Skipped {self.stage}/{self.name}: a reason is required")


def compare(stage: str, measurements: dict, pairs: Sequence[Pair]) -> list:
    """A Result per pair, from the measurements of one interleaved run."""
    out = []
    for pair in pairs:
        for name in (pair.name, pair.baseline):
            if name not in measurements:
                raise KeyError(f"stage {stage}: pair {pair.name}/{pair.baseline} names {name!r}, which was not "
                               f"measured (measured: {sorted(measurements)})")
        a, b = measurements[pair.name], measurements[pair.baseline]
        out.append(Result(
            stage=stage, name=a.name, description=a.description, img_per_s=a.median, spread=a.spread,
            baseline=b.name, baseline_description=b.description, baseline_img_per_s=b.median,
            baseline_spread=b.spread, ratio=a.median / b.median, goal=pair.goal, repeats=len(a.samples),
            data_wait=a.data_wait, baseline_data_wait=b.data_wait))
    return out
