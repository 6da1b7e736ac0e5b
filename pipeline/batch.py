"""The Batch contract: what every consumer of the pipeline receives (docs/DESIGN.md, "Batches")."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Batch:
    """One step's samples on the rank's device.

    images:  [B,3,H,W] float32 or bfloat16, RGB, (x - 127.5) / 127.5.
    labels:  [B] int64, contiguous class ids 0..C-1.
    index:   [B] int64, each sample's global index (its shard key).
    flipped: [B] bool, True where the image was mirrored; None unless the loader was asked
             `with_flip=True` (the teacher-embedding cache keys on it).
    """

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    flipped: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"Batch.images: expected shape [B,3,H,W], found {tuple(self.images.shape)}")
        n = self.images.shape[0]
        for name in ("labels", "index"):
            t = getattr(self, name)
            if t.dtype != torch.int64 or tuple(t.shape) != (n,):
                raise ValueError(f"Batch.{name}: expected int64 [{n}], found {t.dtype} {tuple(t.shape)}")
        if self.flipped is not None and (self.flipped.dtype != torch.bool or tuple(self.flipped.shape) != (n,)):
            raise ValueError(
                f"Batch.flipped: expected bool [{n}], found {self.flipped.dtype} {tuple(self.flipped.shape)}")
