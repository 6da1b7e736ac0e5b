"""The sample order of an epoch: a function of (seed, epoch) alone, split over ranks, tail dropped.

Both backends read their batches from here, so they see the very same samples in the same order, and
a resumed run (epoch, step) sees exactly the batches the uninterrupted run would have seen: the order
is recomputed from (seed, epoch), never carried in a reader's state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from convert.errors import InputError
from pipeline.augment import Augment, AugmentParams, draw_params

# Domain tags keep the streams for the order and for per-step randomness (flips, augmentation) apart.
_ORDER_STREAM = 0x5EED_0D0E
_STEP_STREAM = 0x5EED_57E9


class BatchSizeError(InputError, ValueError):
    """The batch does not fit into one epoch."""


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's order and rank `rank`'s part of it: `global_samples[s]` is step s's global batch (the
    sample keys of all ranks, rank r's at `part`), `samples[s]` this rank's B keys of it."""

    seed: int
    epoch: int
    rank: int
    world_size: int
    batch_size: int
    global_samples: np.ndarray  # int64 [steps, world_size * batch_size]

    @property
    def steps(self) -> int:
        return int(self.global_samples.shape[0])

    @property
    def part(self) -> slice:
        """This rank's columns of a global batch."""
        return slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)

    @property
    def samples(self) -> np.ndarray:
        """int64 [steps, batch_size]: this rank's keys at each step (a view; each row is contiguous)."""
        return self.global_samples[:, self.part]

    def draws(self, step: int, aug: Augment, size: int) -> tuple[np.ndarray, Optional[AugmentParams]]:
        """Step `step`'s random decisions on this rank: flips (bool [B], p = 0.5) and augmentation
        parameters (None when all are off). Both backends call this, so they flip and crop alike."""
        rng = np.random.default_rng([_STEP_STREAM, self.seed, self.epoch, step, self.rank])
        flips = rng.random(self.batch_size) < 0.5
        return flips, draw_params(aug, rng, self.batch_size, size)


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    """Whole global batches in an epoch; raises when not even one fits."""
    if batch_size < 1:
        raise BatchSizeError(f"batch_size: expected >= 1, found {batch_size}")
    steps = num_samples // (batch_size * world_size)
    if steps == 0:
        raise BatchSizeError(
            f"batch_size {batch_size} x world_size {world_size} = {batch_size * world_size} samples a step, "
            f"but the epoch holds only {num_samples} samples")
    return steps


def plan_epoch(num_samples: int, batch_size: int, *, seed: int, epoch: int, rank: int,
               world_size: int) -> EpochPlan:
    """Permute all samples with (seed, epoch), drop the tail that does not fill a global batch, and give
    rank r the r-th slice of every global batch; the W slices of step s together are the global batch a
    single process with batch B*W would see at step s. Every rank holds the whole order (8 bytes a sample),
    so that it knows each step's global batch without communicating (Batch.label_repeats counts over it)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank/world_size: expected 0 <= rank < world_size, found rank={rank}, "
                         f"world_size={world_size}")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch: expected >= 0, found seed={seed}, epoch={epoch}")
    steps = steps_per_epoch(num_samples, batch_size, world_size)
    perm = np.random.default_rng([_ORDER_STREAM, seed, epoch]).permutation(num_samples)
    used = perm[: steps * world_size * batch_size].reshape(steps, world_size * batch_size)
    return EpochPlan(seed, epoch, rank, world_size, batch_size, used)
