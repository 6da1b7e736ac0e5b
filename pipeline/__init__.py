"""Shards to normalized batches on the device: DALI (GPU, or the same graph on CPU), or a torch fallback.

Public API: build_loader, Batch, decode_images, Augment. The only package that imports DALI.
"""
from pipeline.augment import Augment, UnknownAugmentationError
from pipeline.batch import Batch
from pipeline.decode import decode_images
from pipeline.device import PipelineDeviceError, resolve_device
from pipeline.loader import build_loader
from pipeline.order import BatchSizeError, steps_per_epoch
from pipeline.shard_index import ShardError

__all__ = ["Augment", "Batch", "BatchSizeError", "PipelineDeviceError", "ShardError",
           "UnknownAugmentationError", "build_loader", "decode_images", "resolve_device", "steps_per_epoch"]
