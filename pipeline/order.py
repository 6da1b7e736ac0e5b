"""The sample order of an epoch: a function of (seed, epoch) alone, split over ranks, tail dropped.

Both backends read their batches from here, so they see the very same samples in the same order, and
a resumed run (epoch, step) sees exactly the batches the uninterrupted run would have seen: the order
is recomputed from (seed, epoch), never carried in a reader's state.

Datasets laid end to end (pipeline/datasets.py) may carry weights: dataset d then adds round(w_d * N_d)
samples to every epoch, each of its samples floor(w_d) times and a random subset of them once more for
the fraction, drawn anew from (seed, epoch, d); the epoch's order permutes that multiset. Without weights
(or with every weight 1) an epoch is a permutation of all keys, exactly as for one dataset.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from typing import Optional, Sequence, Union

import numpy as np

from common.errors import InputError
from configs import rules
from pipeline.augment import Augment, AugmentParams, draw_params

# Domain tags keep the streams for the order and for per-step randomness (flips, augmentation) apart.
_ORDER_STREAM = 0x5EED_0D0E
_STEP_STREAM = 0x5EED_57E9
_WEIGHT_STREAM = 0x5EED_3E16


class BatchSizeError(InputError, ValueError):
    """The batch does not fit into one epoch."""


class WeightsError(InputError, ValueError):
    """Dataset weights that do not fit the datasets: the message names data.weights and the values."""


class LoaderOptionError(InputError, ValueError):
    """A build_loader argument out of its range; the message names the argument (and its config key)."""


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
        """Step `step`'s random decisions for this rank's samples: flips (bool [B], p = 0.5) and augmentation
        parameters (None when all are off). Both backends call this, so they flip and crop alike.

        The draws are made for the whole global batch from (seed, epoch, step) and this rank takes its
        columns: a sample's flip and crop depend on its place in the global batch, not on the rank that
        reads it, so W ranks x B and 1 rank x W*B see the same augmented samples (a run resumed on another
        number of ranks with the same global batch goes on exactly as its data would have)."""
        rng = np.random.default_rng([_STEP_STREAM, self.seed, self.epoch, step])
        n = self.world_size * self.batch_size
        flips = rng.random(n) < 0.5
        params = draw_params(aug, rng, n, size)
        if params is not None:
            params = AugmentParams(*(getattr(params, f.name)[self.part] for f in fields(AugmentParams)))
        return flips[self.part], params


@dataclass(frozen=True)
class EpochOrder:
    """Every epoch's order for one rank, fixed for a loader's life: `plan(epoch)` is that epoch's EpochPlan
    and `steps` the steps of each epoch (the same in all: a weighted epoch's size does not vary)."""

    sizes: tuple[int, ...]                # each dataset's samples (keys laid end to end)
    batch_size: int
    seed: int
    rank: int
    world_size: int
    weights: Optional[tuple[float, ...]] = None  # check_weights' result: None for 1 each

    def __post_init__(self) -> None:
        _check_ranks(self.rank, self.world_size)
        if self.seed < 0:
            raise ValueError(f"seed: expected >= 0, found {self.seed}")
        _ = self.steps  # raises BatchSizeError when not even one global batch fits

    @property
    def steps(self) -> int:
        return steps_per_epoch(epoch_size(self.sizes, self.weights), self.batch_size, self.world_size)

    def plan(self, epoch: int, start_step: int = 0) -> EpochPlan:
        """Epoch `epoch`'s plan, to be read from `start_step` on (0 <= start_step <= steps, else
        LoaderOptionError)."""
        plan = plan_epoch(self.sizes, self.batch_size, seed=self.seed, epoch=epoch, rank=self.rank,
                          world_size=self.world_size, weights=self.weights)
        if not 0 <= start_step <= plan.steps:
            raise LoaderOptionError(f"step: expected 0 <= step <= {plan.steps} (steps in epoch {epoch}), "
                                    f"found {start_step}")
        return plan


def _check_ranks(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank/world_size: expected 0 <= rank < world_size, found rank={rank}, "
                         f"world_size={world_size}")


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


def check_weights(weights: Optional[Sequence[float]], datasets: int) -> Optional[tuple[float, ...]]:
    """`weights` as a tuple of floats (None: 1 each, and so is every weight 1); raises WeightsError unless
    there is one finite weight >= 0 per dataset and not all are 0."""
    problem = rules.weights_problem(weights, datasets)  # the config's rule (data.weights), for callers without one
    if problem is not None:
        raise WeightsError(f"weights (data.weights): expected {problem}")
    if weights is None:
        return None
    found = tuple(float(w) for w in weights)
    return None if all(w == 1.0 for w in found) else found


def epoch_counts(sizes: Sequence[int], weights: Optional[Sequence[float]]) -> tuple[int, ...]:
    """The samples each dataset adds to an epoch: round(w_d * N_d) (N_d without weights)."""
    w = check_weights(weights, len(sizes))
    return tuple(int(n) for n in sizes) if w is None else tuple(int(round(wd * n)) for wd, n in zip(w, sizes))


def epoch_size(sizes: Union[int, Sequence[int]], weights: Optional[Sequence[float]] = None) -> int:
    """The samples of one epoch (before the tail is dropped): sum over datasets of round(w_d * N_d)."""
    return sum(epoch_counts([sizes] if isinstance(sizes, numbers.Integral) else sizes, weights))


def _weighted_keys(sizes: Sequence[int], weights: tuple[float, ...], seed: int, epoch: int) -> np.ndarray:
    """int64 [epoch_size]: the keys of one weighted epoch, before its permutation, dataset by dataset: each
    of dataset d's keys floor(w_d) times, then a random subset of them for the rest of round(w_d * N_d),
    drawn from (seed, epoch, d) alone."""
    parts, first = [], 0
    for d, (n, count) in enumerate(zip(sizes, epoch_counts(sizes, weights))):
        keys = np.arange(first, first + n, dtype=np.int64)
        whole, rest = divmod(count, n) if n else (0, 0)
        parts += [keys] * whole
        if rest:
            pick = np.random.default_rng([_WEIGHT_STREAM, seed, epoch, d]).permutation(n)[:rest]
            parts.append(keys[np.sort(pick)])
        first += n
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def plan_epoch(sizes: Union[int, Sequence[int]], batch_size: int, *, seed: int, epoch: int, rank: int,
               world_size: int, weights: Optional[Sequence[float]] = None) -> EpochPlan:
    """Permute all samples with (seed, epoch), drop the tail that does not fill a global batch, and give
    rank r the r-th slice of every global batch; the W slices of step s together are the global batch a
    single process with batch B*W would see at step s. Every rank holds the whole order (8 bytes a sample),
    so that it knows each step's global batch without communicating (Batch.global_labels).

    sizes: the number of samples, or each dataset's of a union (keys laid end to end); weights: one per
    dataset (see the module's docstring), None for 1 each."""
    _check_ranks(rank, world_size)
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch: expected >= 0, found seed={seed}, epoch={epoch}")
    sizes = [sizes] if isinstance(sizes, numbers.Integral) else [int(n) for n in sizes]
    w = check_weights(weights, len(sizes))
    pool = None if w is None else _weighted_keys(sizes, w, seed, epoch)  # None: every key once
    num_samples = sum(sizes) if pool is None else len(pool)
    steps = steps_per_epoch(num_samples, batch_size, world_size)
    perm = np.random.default_rng([_ORDER_STREAM, seed, epoch]).permutation(num_samples)
    order = perm if pool is None else pool[perm]
    used = order[: steps * world_size * batch_size].reshape(steps, world_size * batch_size)
    return EpochPlan(seed, epoch, rank, world_size, batch_size, used)
