"""What one benchmark run measures with: sizes, rounds, device, models (built once from the command line)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from common.errors import InputError


class BenchError(InputError, RuntimeError):
    """A benchmark that cannot run as asked; the message says what was asked and what was found."""


@dataclass(frozen=True)
class Settings:
    """device: "cpu" or "cuda". repeats/warmup: timed and untimed rounds per contender. batch_size: the
    loaders' batch; step_batch_size and step_steps: the step stage's batch and timed steps per round.
    student/teacher: backbone names (models.names()). workers: the baseline DataLoader's workers (one
    per core, as insightface's recipe on this machine). scratch: where the convert stage writes (and the growth
    stage, its data). growth_records/growth_classes: the growth stage's sizes and classes."""

    device: str
    repeats: int
    warmup: int
    batch_size: int
    step_batch_size: int
    step_steps: int
    student: str
    teacher: str
    workers: int
    scratch: Path
    quick: bool = False
    progress: bool = True
    step_num_classes: Optional[int] = None  # the step stage's head: this many classes (None: the data's own)
    growth_records: tuple = (100_000, 1_000_000)  # the growth stage's sizes, in records, increasing
    growth_classes: int = 85_742  # the growth stage's classes (MS1MV2's), at most each size's records

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise BenchError(f"device: expected 'cpu' or 'cuda', found {self.device!r}")
        for key in ("repeats", "batch_size", "step_batch_size", "step_steps", "workers"):
            if getattr(self, key) < 1:
                raise BenchError(f"--{key.replace('_', '-')}: expected >= 1, found {getattr(self, key)}")
        if self.step_num_classes is not None and self.step_num_classes < 1:
            raise BenchError(f"--num-classes: expected >= 1, found {self.step_num_classes}")
        if not self.growth_records or any(n < 1 for n in self.growth_records) or \
                list(self.growth_records) != sorted(set(self.growth_records)):
            raise BenchError(f"--growth-records: expected increasing sizes >= 1, found "
                             f"{','.join(map(str, self.growth_records)) or 'none'}")
        if self.growth_classes < 1:
            raise BenchError(f"--growth-classes: expected >= 1, found {self.growth_classes}")
        if self.warmup < 0:
            raise BenchError(f"--warmup: expected >= 0, found {self.warmup}")
