"""The insightface-style baseline loader: torch DataLoader over the .rec, Pillow decode, flip, ToTensor-normalize.

This is what arcface_torch's MXFaceDataset does, with our RecordIO reader standing in for mxnet's
MXIndexedRecordIO: one record read by key per sample, `Image.open` decode, a random horizontal flip,
ToTensor (HWC uint8 -> CHW float / 255) and Normalize(0.5, 0.5); batches are collated by the
DataLoader, `num_workers` processes (one per core), shuffled, the tail dropped.
"""
from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np
import torch
from PIL import Image

from bench.settings import BenchError
from convert.rec_layout import image_keys
from convert.recordio import RecordReader, unpack


class RecDataset(torch.utils.data.Dataset):
    """Item i: (float [3,H,W] in [-1,1], randomly flipped; contiguous label; record key)."""

    def __init__(self, rec: Path, idx: Path, class_map: Optional[Mapping[int, int]] = None) -> None:
        self.rec, self.idx, self.class_map = Path(rec), Path(idx), class_map
        self._reader: Optional[RecordReader] = None
        with RecordReader(self.rec, self.idx) as reader:
            self.keys = image_keys(reader)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        if self._reader is None:  # opened in the worker: a forked file handle would share its seek position
            self._reader = RecordReader(self.rec, self.idx)
        key = self.keys[i]
        header, payload = unpack(self._reader.read(key))
        img = Image.open(io.BytesIO(payload)).convert("RGB")
        if torch.rand(1).item() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div_(255)  # ToTensor
        label = int(header.label if header.flag == 0 else header.label[0])
        if self.class_map is not None:
            label = self.class_map[label]
        return x.sub_(0.5).div_(0.5), label, key  # Normalize(mean=0.5, std=0.5)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reader"] = None
        return state


def class_map_of(shards: Path) -> Optional[dict]:
    """Source label -> contiguous label from the shards' manifest, None when they are the same."""
    from convert.manifest import Manifest

    manifest = Manifest.load(shards)
    if manifest.class_map is None:
        return None
    return {int(source): contiguous for contiguous, source in enumerate(manifest.class_map)}


def baseline_loader(rec: Path, idx: Path, batch_size: int, *, workers: int, seed: int,
                    class_map: Optional[Mapping[int, int]] = None, pin_memory: bool = False,
                    dataset: Optional[RecDataset] = None) -> torch.utils.data.DataLoader:
    """One epoch of (images [B,3,H,W], labels [B], keys [B]) batches, shuffled by `seed`."""
    dataset = dataset or RecDataset(rec, idx, class_map)
    if len(dataset) < batch_size:
        raise BenchError(f"{rec}: {len(dataset)} images do not fill one batch of {batch_size}; pass a smaller "
                         f"--batch-size")
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       drop_last=True, pin_memory=pin_memory,
                                       generator=torch.Generator().manual_seed(seed))


def epoch_loaders(rec: Path, idx: Path, shards: Path, batch_size: int, *, workers: int,
                  pin_memory: bool) -> Callable[[], torch.utils.data.DataLoader]:
    """Each call: the next epoch's loader (seeds 0, 1, 2, ...) over one dataset, labels mapped as in `shards`,
    as a training run builds one loader per epoch."""
    dataset = RecDataset(rec, idx, class_map_of(shards))
    seeds = itertools.count()
    return lambda: baseline_loader(rec, idx, batch_size, workers=workers, seed=next(seeds), dataset=dataset,
                                   pin_memory=pin_memory)
