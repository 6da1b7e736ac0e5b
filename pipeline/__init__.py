"""Shards to normalized batches on the device: DALI (GPU, or the same graph on CPU), or a torch fallback.

Public API: build_loader, Batch, ShardSamples, decode_images, decode_batches, Augment, steps_per_epoch, resolve_device,
cpu_threads; for several shards directories laid end to end: dataset_layout, DatasetSpan, shard_dirs,
layout_text, epoch_size, and Shards (the type of a shards argument: a directory or a
sequence of them); its errors, each an InputError whose message names the file, sample or argument:
ShardError, UndecodableImageError, BatchSizeError, WeightsError, UnknownAugmentationError, LoaderOptionError,
PipelineDeviceError (and its DaliUnavailableError). The only package of the data path that imports DALI
(bench/dali_native.py builds DALI alone, as a baseline).

Modules:
  loader.py        build_loader (a run's loader: every epoch's Batches from a shards directory, from any
                   step) and ShardSamples (any samples by key, decoded as training sees them)
  backend_choice.py which backend and JPEG decoder a loader gets (DALI mixed or CPU, or torch), no silent fallback
  dali_probe.py    what DALI can do on a CUDA device: see it, nvJPEG, the hardware JPEG decoder
  shard_index.py   where every sample's bytes and label live: the manifest, the .idx files, the labels table,
                   mmap'd reads
  datasets.py      several shards directories as one: their key and class offsets, their joined index
  order.py         the order of an epoch: a function of (seed, epoch) (and the datasets' weights), split over
                   ranks, tail dropped; EpochOrder, a loader's plan of every epoch
  augment.py       AdaFace's optional augmentations and their per-sample parameters
  dali_graph.py    the DALI graphs: decode, flip, augment, normalise (GPU "mixed" or CPU)
  epoch_loader.py  EpochLoader, what both backends are: a run's loader, epoch(e, start_step) over one EpochOrder
  dali_loader.py   the DALI backend: one graph for the loader's life, its external source fed each epoch in
                   the exact order, zero-copy to torch
  torch_loader.py  the torch backend (no DALI): DataLoader workers each epoch, libjpeg-turbo decode, same order
  decode.py        decode_images, decode_batches: encoded images to normalised batches (the evaluator's,
                   the cache's), through DALI graphs kept for the process
  kept_graphs.py   built DALI graphs kept for reuse (decode's, from call to call)
  image_check.py   which encoded image does not decode and why, before DALI sees it and after it refused one
  batch.py         the Batch contract
  device.py        the device argument resolved, and the cores a rank may use
"""
from pipeline.augment import Augment, UnknownAugmentationError
from pipeline.backend_choice import DaliUnavailableError
from pipeline.batch import Batch
from pipeline.datasets import Shards, dataset_layout, layout_text, shard_dirs
from pipeline.decode import decode_batches, decode_images
from pipeline.device import PipelineDeviceError, cpu_threads, resolve_device
from pipeline.image_check import UndecodableImageError
from pipeline.loader import LoaderOptionError, ShardSamples, build_loader
from pipeline.order import BatchSizeError, WeightsError, epoch_size, steps_per_epoch
from pipeline.shard_index import DatasetSpan, ShardError

__all__ = ["Augment", "Batch", "BatchSizeError", "DaliUnavailableError", "DatasetSpan", "LoaderOptionError",
           "PipelineDeviceError", "ShardError", "ShardSamples", "Shards", "UndecodableImageError", "UnknownAugmentationError",
           "WeightsError", "build_loader", "cpu_threads", "dataset_layout", "decode_batches", "decode_images", "epoch_size",
           "layout_text", "resolve_device", "shard_dirs", "steps_per_epoch"]
