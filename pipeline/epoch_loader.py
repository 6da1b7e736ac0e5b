"""What both training backends are (pipeline.build_loader): one loader for a run, over one EpochOrder.

`epoch(e, start_step)` yields epoch e's batches from that step on, one epoch at a time; `len()` is an
epoch's steps, the same for every epoch; `iter()` is epoch 0's, for a reader of one pass. A backend
(pipeline/dali_loader.py, pipeline/torch_loader.py) writes `_batches`, the rest is here once, and so is what
both read of each step (`step_fields`).
"""
from __future__ import annotations

import abc
from typing import Iterator

import torch

from pipeline.augment import Augment
from pipeline.batch import Batch
from pipeline.order import EpochOrder, EpochPlan
from pipeline.shard_index import ShardIndex, ShardReader


class EpochLoader(abc.ABC):
    backend = ""  # "dali" or "torch": the subclass's

    def __init__(self, index: ShardIndex, order: EpochOrder, *, device: torch.device, dtype: torch.dtype,
                 aug: Augment, with_flip: bool, channels_last: bool, decoder: str) -> None:
        self.index, self.order = index, order
        self.device, self.dtype, self.aug, self.with_flip = device, dtype, aug, with_flip
        self.channels_last, self.decoder = channels_last, decoder
        self.num_classes, self.num_samples = index.num_classes, index.num_samples
        self.datasets = index.datasets  # each directory's keys and classes (pipeline.DatasetSpan)
        # the tars mapped once for the run: no page faults anew each epoch (the torch backend's workers
        # inherit the maps)
        self._reader = ShardReader(index)

    def __len__(self) -> int:
        return self.order.steps

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Epoch `epoch`'s batches from step `start_step` on (checked here, before the first batch)."""
        return self._batches(self.order.plan(epoch, start_step), start_step)

    @abc.abstractmethod
    def _batches(self, plan: EpochPlan, start_step: int) -> Iterator[Batch]:
        """The backend's batches of `plan` from step `start_step` on (already checked against the plan)."""


def step_fields(plan: EpochPlan, step: int, aug: Augment, reader: ShardReader) -> tuple:
    """Step `step` of `plan` on the host, the same in both backends: (keys int64 [B], flips bool [B],
    augmentation parameters (None when all are off), labels int64 [B], global labels int64 [W*B])."""
    keys = plan.samples[step].copy()  # the Batch's own, not a view of the epoch's order
    flips, params = plan.draws(step, aug, reader.index.image_size)
    labels, global_labels = reader.step_labels(plan.global_samples[step], plan.part)
    return keys, flips, params, labels, global_labels
