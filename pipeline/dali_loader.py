"""One epoch of batches through the DALI graph, in the order that pipeline/order.py fixed.

Why not `fn.readers.webdataset` with `random_shuffle`: its order is a shuffle buffer (`initial_fill`)
seeded once, whose state runs on from epoch to epoch, and with `num_shards` each rank reads a fixed
contiguous slice. Reaching batch s of epoch e would then need either replaying everything before it or
a DALI checkpoint saved by the previous run, and the torch backend could not reproduce that order. Here
the order is a seeded permutation per (seed, epoch) over all samples (a global shuffle, better than any
buffer for identity mix), split per rank with the tail dropped; resuming is starting at `step`. The
images enter DALI through one batched `fn.external_source` as zero-copy views of the memory-mapped tars,
located with the shards' DALI `.idx` files, so the reader adds only a list of B views per batch; the
decoding, flips and normalization run in DALI's threads (or on the GPU). The built graph (and the maps of
the tars) outlive the epoch: the next loader with the same settings feeds its epoch into them, so a run
pays for building DALI's operators and refilling its queue once, not every epoch.

A sample that does not decode stops the epoch with a ShardError naming its shard and key: each image's
header is checked as its batch is fed (pipeline/image_check.py; bytes DALI's parser cannot take could
end the process), and a batch DALI still refuses is searched for the culprit among the batches in flight.
"""
from __future__ import annotations

from collections import deque
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from pipeline.augment import Augment
from pipeline.batch import Batch
from pipeline.dali_graph import AUGMENT_INPUTS, PREFETCH, build_train_graph, to_torch
from pipeline.kept_graphs import KeptGraphs
from pipeline.order import EpochPlan
from pipeline.image_check import dali_reason, first_undecodable
from pipeline.shard_index import ShardError, ShardIndex, ShardReader


class DaliLoader:
    """Iterable over the batches of one epoch from `start_step` on; `len()` is the epoch's steps."""

    backend = "dali"

    def __init__(self, index: ShardIndex, plan: EpochPlan, *, start_step: int, device: torch.device,
                 dtype: torch.dtype, aug: Augment, with_flip: bool, channels_last: bool = False,
                 hw_decoder_load: Optional[float] = None, decoder: str = "", num_threads: Optional[int] = None,
                 prefetch: int = PREFETCH) -> None:
        self.index, self.plan, self.start_step = index, plan, start_step
        self.device, self.dtype, self.aug, self.with_flip = device, dtype, aug, with_flip
        self.channels_last, self.hw_decoder_load, self.decoder = channels_last, hw_decoder_load, decoder
        self.num_threads, self.prefetch = num_threads, prefetch
        self.num_classes, self.num_samples = index.num_classes, index.num_samples
        self.datasets = index.datasets  # each directory's keys and classes (pipeline.DatasetSpan)

    def __len__(self) -> int:
        return self.plan.steps

    def _feed(self, reader: ShardReader, pending: deque) -> Callable[[], tuple]:
        """This epoch's input: one batch a call, in the plan's order; StopIteration at the epoch's end."""
        plan, aug, size = self.plan, self.aug, self.index.image_size
        steps = iter(range(self.start_step, plan.steps))

        def feed() -> tuple:
            step = next(steps)  # StopIteration at the epoch's end tells DALI the input has ended
            keys = plan.samples[step].copy()  # the Batch's own, not a view of the epoch's order
            flips, params = plan.draws(step, aug, size)
            labels, global_labels = reader.step_labels(plan.global_samples[step], plan.part)
            out = [reader.checked_images(keys), flips.astype(np.int32)]  # a dense array is a whole batch
            if params is not None:
                out += [getattr(params, name) for name in AUGMENT_INPUTS]
            out = tuple(out)
            # The graph reads these arrays without copying them: they stay referenced here until the
            # batch comes out of the pipeline.
            pending.append((keys, labels, flips, global_labels, out))
            return out

        return feed

    def _graph_key(self) -> tuple:
        return (self.index.encoding, self.plan.batch_size, self.index.image_size, self.device, self.aug,
                self.num_threads, self.prefetch, self.hw_decoder_load, self.channels_last)

    def __iter__(self) -> Iterator[Batch]:
        pending: deque = deque()
        key = self._graph_key()
        graph = _KEPT.take(key, self._build)
        if graph.reader is None or graph.reader.index is not self.index:
            graph.reader = ShardReader(self.index)  # its maps of the tars, kept with the graph: no page faults anew
        reader = graph.reader
        graph.source.feed = self._feed(reader, pending)
        finished = False
        try:
            for _ in range(self.start_step, self.plan.steps):
                try:
                    (images,) = graph.pipe.run()
                except ShardError:  # raised by our source (a header): it names the sample already
                    raise
                except RuntimeError as err:
                    raise _refused(reader, pending, err) from err
                keys, labels, flips, global_labels, _ = pending.popleft()  # in the order DALI asked
                yield Batch(images=to_torch(images, self.device, self.dtype, channels_last=self.channels_last),
                            labels=torch.from_numpy(labels).to(self.device, non_blocking=True),
                            index=torch.from_numpy(keys).to(self.device, non_blocking=True),
                            flipped=torch.from_numpy(flips).to(self.device) if self.with_flip else None,
                            keys=keys, flips=flips if self.with_flip else None, global_labels=global_labels)
            finished = _ended(graph.pipe)
        finally:
            graph.source.feed = None
            if finished:
                graph.pipe.reset()  # ready for the next epoch's input
                _KEPT.give_back(key, graph)
            # else: stopped early, or failed, with batches in flight: the graph is dropped (its threads and
            # buffers freed now) and the next epoch builds a new one

    def _build(self) -> "_Graph":
        graph = _Graph()
        graph.pipe = build_train_graph(graph.source, encoding=self.index.encoding, batch_size=self.plan.batch_size,
                                       size=self.index.image_size, device=self.device, aug=self.aug,
                                       num_threads=self.num_threads, prefetch=self.prefetch,
                                       hw_decoder_load=self.hw_decoder_load, channels_last=self.channels_last)
        return graph


def _ended(pipe) -> bool:
    """Whether the graph's input ended with the last batch read (the state in which reset() readies it for
    another epoch): the run after it raises StopIteration at once."""
    try:
        pipe.run()
    except StopIteration:
        return True
    return False


class _Source:
    """A training graph's input: the epoch's `feed`, which each epoch replaces with its own (None between
    epochs: the input has ended). The graph holds it, and it holds nothing of the graph: a dropped _Graph
    is no reference cycle, so its pipeline shuts down at once instead of at a later garbage collection
    (which a forked DataLoader worker may run: DALI's shutdown then hangs the worker)."""

    def __init__(self) -> None:
        self.feed: Optional[Callable[[], tuple]] = None

    def __call__(self) -> tuple:
        if self.feed is None:
            raise StopIteration
        return self.feed()


class _Graph:
    """A built training graph, its source, and the reader of the shards it last read."""

    def __init__(self) -> None:
        self.source = _Source()
        self.pipe = None
        self.reader: Optional[ShardReader] = None  # the last epoch's, reused when the next reads the same index


# A training run builds one loader an epoch: an epoch that ends cleanly leaves its graph for the next.
_KEPT = KeptGraphs(keep=2)


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
