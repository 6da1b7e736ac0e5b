"""A run's batches through one DALI graph, epoch by epoch, in the order that pipeline/order.py fixed.

Why not `fn.readers.webdataset` with `random_shuffle`: its order is a shuffle buffer (`initial_fill`)
seeded once, whose state runs on from epoch to epoch, and with `num_shards` each rank reads a fixed
contiguous slice. Reaching batch s of epoch e would then need either replaying everything before it or
a DALI checkpoint saved by the previous run, and the torch backend could not reproduce that order. Here
the order is a seeded permutation per (seed, epoch) over all samples (a global shuffle, better than any
buffer for identity mix), split per rank with the tail dropped; resuming is starting at `step`. The
images enter DALI through one batched `fn.external_source` as zero-copy views of the memory-mapped tars,
located with the shards' DALI `.idx` files, so the reader adds only a list of B views per batch; the
decoding, flips and normalization run in DALI's threads (or on the GPU). The loader lives for the run:
its graph (built by the first epoch, reset at each epoch's end) and its maps of the tars serve every epoch,
so a run pays for building DALI's operators once. An epoch that ends with batches in flight (left midway,
or failed) drops the graph, and the next epoch builds another.

A sample that does not decode stops the epoch with a ShardError naming its shard and key: each image's
header is checked as its batch is fed (pipeline/image_check.py; bytes DALI's parser cannot take could
end the process), and a batch DALI still refuses is searched for the culprit among the batches in flight.
"""
from __future__ import annotations

import traceback
import weakref
from collections import deque
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from pipeline.augment import Augment
from pipeline.batch import Batch
from pipeline.dali_graph import AUGMENT_INPUTS, PREFETCH, build_train_graph, to_torch
from pipeline.epoch_loader import EpochLoader, step_fields
from pipeline.order import EpochOrder, EpochPlan
from pipeline.image_check import dali_reason, first_undecodable
from pipeline.shard_index import ShardError, ShardIndex, ShardReader


class DaliLoader(EpochLoader):
    """The DALI backend of pipeline.epoch_loader.EpochLoader."""

    backend = "dali"

    def __init__(self, index: ShardIndex, order: EpochOrder, *, device: torch.device, dtype: torch.dtype,
                 aug: Augment, with_flip: bool, channels_last: bool = False, hw_decoder_load: Optional[float] = None,
                 decoder: str = "", num_threads: Optional[int] = None, prefetch: int = PREFETCH) -> None:
        super().__init__(index, order, device=device, dtype=dtype, aug=aug, with_flip=with_flip,
                         channels_last=channels_last, decoder=decoder)
        self.hw_decoder_load, self.num_threads, self.prefetch = hw_decoder_load, num_threads, prefetch
        self._pipe = None  # the DALI graph: built by the first epoch, dropped by one that ends with batches in flight
        self._feed: Optional[Callable[[], tuple]] = None  # the epoch being read: its next input; None between epochs

    def _batches(self, plan: EpochPlan, start_step: int) -> Iterator[Batch]:
        if self._feed is not None:
            raise RuntimeError("DaliLoader: an epoch is still being read; the loader reads one epoch at a time")
        pending: deque = deque()
        self._feed = _inputs(plan, start_step, self.aug, self._reader, pending)
        finished = False
        try:
            if self._pipe is None:
                self._pipe = self._build()
            for _ in range(start_step, plan.steps):
                try:
                    (images,) = self._pipe.run()
                except (ShardError, RuntimeError) as err:
                    # DALI's frames in the traceback hold the graph: cleared, the graph goes with the epoch
                    # (below) even while the error lives on, in the reference cycle any caller that stores
                    # it makes, rather than at a garbage collection a forked DataLoader worker may run.
                    traceback.clear_frames(err.__traceback__)
                    if isinstance(err, ShardError):  # raised by our source (a header): it names the sample
                        raise
                    raise _refused(self._reader, pending, err) from err
                keys, labels, flips, global_labels, _ = pending.popleft()  # in the order DALI asked
                yield Batch(images=to_torch(images, self.device, self.dtype, channels_last=self.channels_last),
                            labels=torch.from_numpy(labels).to(self.device, non_blocking=True),
                            index=torch.from_numpy(keys).to(self.device, non_blocking=True),
                            flipped=torch.from_numpy(flips).to(self.device) if self.with_flip else None,
                            keys=keys, flips=flips if self.with_flip else None, global_labels=global_labels)
            finished = _ended(self._pipe)
        finally:
            self._feed = None
            if finished:
                self._pipe.reset()  # ready for the next epoch's input
            else:  # stopped early, or failed, with batches in flight: the graph goes now (its threads and
                self._pipe = None  # buffers freed), and the next epoch builds a new one

    def _next_input(self) -> tuple:
        if self._feed is None:
            raise StopIteration
        return self._feed()

    def _build(self):
        # The graph holds its source, so the source holds the loader weakly: a reference back would make
        # loader and graph a cycle, whose pipeline only a later garbage collection would shut down, maybe in
        # a forked DataLoader worker (the torch backend's, the benchmark's), where DALI's shutdown hangs.
        loader = weakref.ref(self)
        return build_train_graph(lambda: loader()._next_input(), encoding=self.index.encoding,
                                 batch_size=self.order.batch_size, size=self.index.image_size, device=self.device,
                                 aug=self.aug, num_threads=self.num_threads, prefetch=self.prefetch,
                                 hw_decoder_load=self.hw_decoder_load, channels_last=self.channels_last)


def _inputs(plan: EpochPlan, start_step: int, aug: Augment, reader: ShardReader,
            pending: deque) -> Callable[[], tuple]:
    """An epoch's input: one batch a call, in the plan's order; StopIteration at the epoch's end."""
    steps = iter(range(start_step, plan.steps))

    def feed() -> tuple:
        step = next(steps)  # StopIteration at the epoch's end tells DALI the input has ended
        keys, flips, params, labels, global_labels = step_fields(plan, step, aug, reader)
        out = [reader.checked_images(keys), flips.astype(np.int32)]  # a dense array is a whole batch
        if params is not None:
            out += [getattr(params, name) for name in AUGMENT_INPUTS]
        out = tuple(out)
        # The graph reads these arrays without copying them: they stay referenced here until the
        # batch comes out of the pipeline.
        pending.append((keys, labels, flips, global_labels, out))
        return out

    return feed


def _ended(pipe) -> bool:
    """Whether the graph's input ended with the last batch read (the state in which reset() readies it for
    another epoch): the run after it raises StopIteration at once."""
    try:
        pipe.run()
    except StopIteration:
        return True
    return False


def _refused(reader: ShardReader, pending: deque, err: RuntimeError) -> ShardError:
    """The error for a batch DALI refused: the first sample of the batches in flight that does not decode
    in full, or, where every one decodes outside DALI, the shards and keys of those batches."""
    for keys, *_ in pending:
        found = first_undecodable(reader.images(keys))
        if found is not None:
            item, problem = found
            return ShardError(f"{reader.member(int(keys[item]))} does not decode ({problem})")
    keys = np.concatenate([p[0] for p in pending]) if pending else np.zeros(0, np.int64)
    shards = sorted({str(reader.index.paths[k]) for k in reader.index.shard_of[keys].tolist()})
    return ShardError(f"{', '.join(shards) or reader.index.where}: DALI could not decode one of the samples "
                      f"{sorted(keys.tolist())[:8]}{' ...' if keys.size > 8 else ''} ({dali_reason(err)})")
