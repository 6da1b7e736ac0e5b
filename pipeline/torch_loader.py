"""The torch backend: the same epochs as the DALI loader, decoded with libjpeg-turbo in DataLoader workers
(forked for each epoch, from the shards' maps the loader holds for its life).

Used where DALI cannot be imported, and as a reference. One DataLoader item is one whole step (the
rank's B samples of pipeline/order.py's plan), so the per-sample cost is a decode and a copy, and the
flips and augmentation parameters are the very draws the DALI loader uses.

Samples are read by offset through the shards' `.idx` files, like the DALI loader, rather than by
webdataset's streaming reader: a stream can only shuffle inside a buffer, and would neither give the
(seed, epoch) permutation the DALI loader uses nor start exactly at a resumed step.

A sample that does not decode stops the epoch with a ShardError naming its shard and key (labels are
checked once, when the index opens). A worker returns that error as its item instead of raising it:
DataLoader would re-raise it with the worker's whole traceback folded into the message.
"""
from __future__ import annotations

import io
from typing import Iterator

import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.augment import Augment, AugmentParams
from pipeline.batch import Batch
from pipeline.device import threads_per_rank
from pipeline.epoch_loader import EpochLoader, step_fields
from pipeline.order import EpochOrder, EpochPlan
from pipeline.shard_index import ShardError, ShardIndex, ShardReader

_JPEG_MAGIC = b"\xff\xd8"


def _decode(view: np.ndarray, where: str) -> np.ndarray:
    """HWC uint8 RGB from encoded bytes: JPEG through simplejpeg, anything else (PNG, BMP, ...: DALI's
    decoder takes them too, whatever the member's extension) through Pillow."""
    try:
        if view[:2].tobytes() == _JPEG_MAGIC:
            return simplejpeg.decode_jpeg(view, colorspace="RGB")
        with Image.open(io.BytesIO(view.tobytes())) as im:  # Pillow reads files, not buffers
            return np.asarray(im.convert("RGB"))
    except Exception as err:  # both libraries raise their own types; say which sample failed
        raise ShardError(f"{where} does not decode ({type(err).__name__}: {err})") from None


class _Steps(torch.utils.data.Dataset):
    """Item s = step s of the plan: (uint8 [B,H,W,3] flipped images, labels, keys, flips, global labels,
    aug params)."""

    def __init__(self, reader: ShardReader, plan: EpochPlan, aug: Augment) -> None:
        self.reader, self.plan, self.aug = reader, plan, aug

    def __len__(self) -> int:
        return self.plan.steps

    def __getitem__(self, step: int):
        try:
            return self._step(step)
        except ShardError as err:
            return err  # raised by TorchLoader in the main process, as it is

    def _step(self, step: int):
        reader, index = self.reader, self.reader.index
        keys, flips, params, labels, global_labels = step_fields(self.plan, step, self.aug, reader)
        side = index.image_size
        out = np.empty((len(keys), side, side, 3), np.uint8)
        for i, (key, view) in enumerate(zip(keys.tolist(), reader.images(keys))):
            img = view if index.encoding == "raw" else _decode(view, reader.member(key))
            if img.shape != (side, side, 3):
                raise ShardError(f"{reader.member(key)}: image is {img.shape[1]}x{img.shape[0]}, "
                                 f"expected {side}x{side} (manifest image_size)")
            out[i] = img[:, ::-1] if flips[i] else img
        return torch.from_numpy(out), torch.from_numpy(labels), torch.from_numpy(keys), \
            torch.from_numpy(flips), global_labels, params


def _augment(x: torch.Tensor, p: AugmentParams, aug: Augment) -> torch.Tensor:
    """x: float [B,3,S,S] in 0..255. The DALI graph's operations with the same parameters; resampling and
    the contrast pivot differ in detail from DALI's, so augmented images agree only approximately."""
    size = x.shape[-1]
    if aug.crop > 0:
        rows = []
        for i in range(x.shape[0]):  # per-sample windows: a loop, but only when asked for
            y0, x0 = (p.roi_start[i] * size).round().astype(int)
            y1, x1 = (p.roi_end[i] * size).round().astype(int)
            crop = x[i:i + 1, :, y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
            rows.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False))
        x = torch.cat(rows)
    if aug.low_res > 0:
        rows = []
        for i in range(x.shape[0]):
            side = int(p.low_res_side[i])
            small = F.interpolate(x[i:i + 1], size=(side, side), mode="bilinear", antialias=True,
                                  align_corners=False)
            rows.append(F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False))
        x = torch.cat(rows)
    if aug.photometric > 0:
        b, c, s = (torch.from_numpy(v).to(x.device).view(-1, 1, 1, 1)
                   for v in (p.brightness, p.contrast, p.saturation))
        x = x * b
        grey = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = grey + (x - grey) * s
        x = x.mean(dim=(1, 2, 3), keepdim=True) + (x - x.mean(dim=(1, 2, 3), keepdim=True)) * c
        x = x.clamp(0, 255)
    return x


def _as_is(item):
    return item  # items are whole batches already


class TorchLoader(EpochLoader):
    """The torch backend of pipeline.epoch_loader.EpochLoader."""

    backend = "torch"

    def __init__(self, index: ShardIndex, order: EpochOrder, *, device: torch.device, dtype: torch.dtype,
                 aug: Augment, with_flip: bool, channels_last: bool = False, decoder: str = "",
                 num_workers: int | None = None) -> None:
        super().__init__(index, order, device=device, dtype=dtype, aug=aug, with_flip=with_flip,
                         channels_last=channels_last, decoder=decoder)
        self.num_workers = threads_per_rank() if num_workers is None else num_workers

    def _batches(self, plan: EpochPlan, start_step: int) -> Iterator[Batch]:
        workers = self.num_workers
        loader = torch.utils.data.DataLoader(
            _Steps(self._reader, plan, self.aug), batch_size=None,
            sampler=range(start_step, plan.steps), num_workers=workers,
            prefetch_factor=4 if workers else None, pin_memory=self.device.type == "cuda",
            collate_fn=_as_is)
        for item in loader:
            if isinstance(item, ShardError):
                raise item
            images, labels, keys, flips, global_labels, params = item
            x = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
            if params is not None:
                x = _augment(x, params, self.aug)
            x = x.sub_(127.5).div_(127.5)
            x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
            yield Batch(images=x if self.dtype == torch.float32 else x.to(self.dtype),
                        labels=labels.to(self.device), index=keys.to(self.device),
                        flipped=flips.to(self.device) if self.with_flip else None,
                        keys=keys.numpy(), flips=flips.numpy() if self.with_flip else None,
                        global_labels=global_labels)
