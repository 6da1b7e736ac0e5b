"""The entry points from a shards directory, or several laid end to end (pipeline/datasets.py): `build_loader`
(a run's loader: every epoch's Batches on the device) and `ShardSamples` (any samples by key, for tables kept beside the shards
such as the teacher cache)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from configs import rules
from pipeline.augment import Augment, parse_augment
from pipeline.backend_choice import BACKENDS, choose
from pipeline.device import resolve_device
from pipeline.datasets import Shards, join_indexes, shard_dirs
from pipeline.order import EpochOrder, LoaderOptionError, check_weights
from pipeline.decode import decode_batches, joined
from pipeline.image_check import UndecodableImageError
from pipeline.shard_index import ShardError, ShardIndex, ShardReader

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LAYOUTS = ("NCHW", "NHWC")


def open_index(shards: Shards) -> ShardIndex:
    """The parsed shards directory, or the union of several (pipeline/datasets.py)."""
    return join_indexes([ShardIndex.open(Path(d).resolve()) for d in shard_dirs(shards)])


def _check_hw_decoder_load(value) -> Optional[float]:
    problem = rules.hw_decoder_load_problem(value)  # the config's rule, for callers without a config
    if problem is not None:
        raise LoaderOptionError(f"data.hw_decoder_load: expected {problem}")
    return None if value is None else float(value)


def build_loader(shards: Shards, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 device: Union[str, torch.device] = "auto", seed: int = 0,
                 augment: Union[None, Augment, Mapping[str, float]] = None, dtype: torch.dtype = torch.float32,
                 backend: str = "auto", with_flip: bool = False, hw_decoder_load: Optional[float] = None,
                 layout: str = "NCHW", weights: Optional[Sequence[float]] = None):
    """The loader of a run for rank `rank` of `world_size`: `loader.epoch(e, start_step=s)` yields epoch e's
    `pipeline.Batch`es from step s on (`iter(loader)`: epoch 0's, for a reader of one pass), one epoch at a
    time; the shards' maps and the DALI graph (or the torch backend's reader) live as long as the loader.

    The order is a function of (seed, epoch) alone, every rank runs `len(loader)` steps an epoch (the tail
    that does not fill a global batch is dropped; every epoch has as many), and start_step s > 0 resumes
    with exactly the batches the uninterrupted epoch would have yielded from there (len(loader) - s of
    them; s outside 0..len(loader) raises LoaderOptionError). `loader.num_classes` and `loader.num_samples` come
    from the manifest. Images are flipped with p = 0.5; `augment` adds AdaFace's augmentations
    (pipeline.Augment or a mapping name -> probability). Each Batch also carries its keys, flips, the
    global batch's labels and their largest repeat count on the host (pipeline.Batch).

    shards: a directory written by `python -m convert`, or a sequence of them laid end to end (keys and
    classes offset by the datasets before each; pipeline/datasets.py): `loader.datasets` holds each one's
    pipeline.DatasetSpan, and num_samples/num_classes are the union's. weights (data.weights): one per
    dataset; dataset d adds round(w_d * N_d) samples to every epoch (2: each sample twice; 0.5: a random
    half drawn anew from (seed, epoch)), so len(loader) follows the weighted epoch; None: 1 each.

    backend: "dali", "torch", or "auto" (DALI, else the torch backend with one warning; see
    pipeline/backend_choice.py). On a CUDA device, backend="dali" without a DALI that can decode there
    raises PipelineDeviceError. `loader.backend` is the one chosen and `loader.decoder` the decoder in use,
    in a few words ("nvJPEG hardware (mixed, hw_decoder_load=0.65)", "nvJPEG CUDA (mixed)",
    "libjpeg-turbo (DALI CPU)", "libjpeg-turbo (torch backend)", ...).
    hw_decoder_load: the share of each batch's JPEGs that DALI's mixed decoder gives the hardware JPEG
    decoder (A100/H100/H200), the rest going to nvJPEG's CUDA decoder; None keeps DALI's default (0.65 in
    DALI 2.4). Validated everywhere (config key data.hw_decoder_load), used only by DALI on a GPU: the
    CPU graph and the torch backend ignore it.
    layout: "NCHW" (default: contiguous images) or "NHWC" (the same [B,3,H,W] shape in
    torch.channels_last memory format; DALI writes HWC, so a channels_last model needs no copy).
    """
    aug = parse_augment(augment)
    if dtype not in DTYPES:
        raise LoaderOptionError(f"dtype: expected one of {DTYPES}, found {dtype!r}")
    if backend not in BACKENDS:
        raise LoaderOptionError(f"backend (data.backend): expected one of {BACKENDS}, found {backend!r}")
    if layout not in LAYOUTS:
        raise LoaderOptionError(f"layout: expected one of {LAYOUTS}, found {layout!r}")
    hw_load = _check_hw_decoder_load(hw_decoder_load)
    weights = check_weights(weights, len(shard_dirs(shards)))
    dev = resolve_device(device)
    index = open_index(shards)
    chosen = choose(backend, dev, index.encoding, hw_load)
    order = EpochOrder(tuple(d.num_samples for d in index.datasets), batch_size, seed=seed, rank=rank,
                       world_size=world_size, weights=weights)
    common = dict(device=dev, dtype=dtype, aug=aug, with_flip=with_flip,
                  channels_last=layout == "NHWC", decoder=chosen.decoder)
    if chosen.backend == "dali":
        from pipeline.dali_loader import DaliLoader

        return DaliLoader(index, order, hw_decoder_load=hw_load, **common)
    from pipeline.torch_loader import TorchLoader

    return TorchLoader(index, order, **common)


class ShardSamples:
    """Random access to every sample of a shards directory (or of several laid end to end, as build_loader
    takes them) by its global key (0..num_samples-1), decoded and normalised as training sees them: what
    builds a per-sample table beside the shards. Labels are the union's classes."""

    def __init__(self, shards: Shards) -> None:
        self._index = open_index(shards)
        self._reader = ShardReader(self._index)
        self.num_samples, self.num_classes = self._index.num_samples, self._index.num_classes
        self.image_size, self.encoding = self._index.image_size, self._index.encoding
        self.datasets = self._index.datasets

    @property
    def mean_member_bytes(self) -> float:
        """The mean size of a sample's stored image (its JPEG, or its raw pixels)."""
        return float(self._index.table[:, 1].mean())

    def labels(self, keys: np.ndarray) -> np.ndarray:
        """int64 [len(keys)]: each sample's label."""
        return self._reader.labels(keys)

    def encoded(self, keys: np.ndarray) -> list[np.ndarray]:
        """Each sample's stored image bytes (JPEG, or raw HWC pixels), zero-copy views of the mapped tars."""
        return self._reader.images(keys)

    def images(self, keys: np.ndarray, *, device: Union[str, torch.device] = "auto",
               batch_size: int = 256) -> torch.Tensor:
        """float32 [len(keys), 3, S, S], RGB, (x - 127.5) / 127.5 on `device`: JPEG shards decoded by
        `decode_images` (the training loader's DALI decoder), raw shards only normalised. A sample that
        does not decode raises ShardError naming its shard and key."""
        return joined(self.image_batches(keys, device=device, batch_size=batch_size), self.image_size,
                      resolve_device(device))

    def image_batches(self, keys: np.ndarray, *, device: Union[str, torch.device] = "auto",
                      batch_size: int = 256) -> Iterator[torch.Tensor]:
        """`images(keys)` in batches of at most `batch_size`, in order, without joining them (no copy: each
        is DALI's output, pipeline.decode_batches). Every sample's header is checked before the first batch."""
        views = self.encoded(keys)
        if self.encoding == "raw":  # HWC uint8 pixels: nothing to decode
            dev = resolve_device(device)
            for s in range(0, len(views), batch_size):
                pixels = torch.from_numpy(np.stack(views[s:s + batch_size])).to(dev)
                yield pixels.permute(0, 3, 1, 2).float().sub_(127.5).div_(127.5)
            return
        try:
            yield from decode_batches(views, size=self.image_size, device=device, batch_size=batch_size)
        except UndecodableImageError as err:
            where = self._reader.member(int(keys[err.item])) if err.item is not None else \
                f"{self._index.where}: one of samples {np.sort(keys)[:8].tolist()}{' ...' if len(keys) > 8 else ''}"
            raise ShardError(f"{where} does not decode ({err.reason})") from err
