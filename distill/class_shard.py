"""Which class centres a rank holds: the rows [r*C/W, (r+1)*C/W) of rank r of W (`ClassShard`), and whether
a run shards them at all (`shard_for_run`, from distill.shard_classes and distill.sample_rate)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from configs import ConfigError, DistillConfig
from configs.schema import SHARD_AUTO_MIN_CLASSES


@dataclass(frozen=True)
class ClassShard:
    """Rank `rank` of `world_size` holds the centres of classes [start, stop) of `num_classes`.

    The bounds are floor(r * C / W): the shards differ by at most one row, and the tail's remainder is
    spread over the ranks instead of left to the last one."""

    rank: int
    world_size: int
    num_classes: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"ClassShard: rank {self.rank} outside world_size {self.world_size}")
        if self.num_classes < self.world_size:
            raise ConfigError(f"distill.shard_classes: {self.num_classes} classes cannot be split over "
                              f"{self.world_size} ranks (each rank needs at least one class); set "
                              f"distill.shard_classes=false")

    @property
    def start(self) -> int:
        return bounds(self.num_classes, self.world_size, self.rank)[0]

    @property
    def stop(self) -> int:
        return bounds(self.num_classes, self.world_size, self.rank)[1]

    @property
    def rows(self) -> int:
        return self.stop - self.start


def bounds(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank `rank`'s classes."""
    return rank * num_classes // world_size, (rank + 1) * num_classes // world_size


def shards_classes(d: DistillConfig, num_classes: int, world_size: int) -> bool:
    """Whether a run shards its class centres: distill.shard_classes as given, or for `auto`, with 2+ ranks
    from SHARD_AUTO_MIN_CLASSES classes on, and always with Partial FC sampling (sample_rate < 1); never with
    centre_update per_rank (each rank's own copy of every centre)."""
    if d.shard_classes == "auto":
        if d.centre_update == "per_rank":
            return False
        return d.sample_rate < 1 or (world_size > 1 and num_classes >= SHARD_AUTO_MIN_CLASSES)
    return bool(d.shard_classes)


def shard_for_run(d: DistillConfig, num_classes: int, rank: int, world_size: int) -> Optional[ClassShard]:
    """This rank's ClassShard, or None for a replicated head (every rank holds all C centres)."""
    if not shards_classes(d, num_classes, world_size):
        return None
    return ClassShard(rank, world_size, num_classes)
