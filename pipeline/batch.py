"""The Batch contract: what every consumer of the pipeline receives (docs/DESIGN.md, "Batches")."""
from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Optional

import numpy as np
import torch


@dataclass(frozen=True)
class Batch:
    """One step's samples on the rank's device, and what the host already knows about them.

    On the device:
    images:  [B,3,H,W] float32 or bfloat16, RGB, (x - 127.5) / 127.5; contiguous (NCHW), or in
             torch.channels_last memory format when the loader was asked `layout="NHWC"` (same shape).
    labels:  [B] int64, contiguous class ids 0..C-1.
    index:   [B] int64, each sample's global index (its shard key).
    flipped: [B] bool, True where the image was mirrored; None unless the loader was asked
             `with_flip=True` (the teacher-embedding cache keys on it).
    On the host (numpy; read them instead of copying the tensors above back, which would sync the device),
    keyword-only:
    keys:    int64 [B], the values of `index`; required (whoever builds a batch holds its keys on the host).
    flips:   bool [B], the values of `flipped`; None when `flipped` is None.
    global_labels: int64 [W*B], the labels of this step's GLOBAL batch: every rank's batch, in rank order
             (rank r's `labels` are global_labels[r*B:(r+1)*B]), as an all_gather of `labels` would give them;
             the same on every rank, known without communicating (the order is a function of seed and epoch).
    Batches built by pipeline.build_loader fill all three; global_labels is None only in batches made
    elsewhere (a benchmark's baseline loader, the training loop's micro-batches).
    """

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    flipped: Optional[torch.Tensor] = None
    _: KW_ONLY
    keys: np.ndarray
    flips: Optional[np.ndarray] = None
    global_labels: Optional[np.ndarray] = None

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
        for name, dtype in (("keys", np.int64), ("flips", np.bool_)):
            a = getattr(self, name)
            if (a is not None or name == "keys") and (not isinstance(a, np.ndarray) or a.dtype != dtype
                                                       or a.shape != (n,)):
                found = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                raise ValueError(f"Batch.{name}: expected a numpy {np.dtype(dtype)} [{n}], found {found}")
        g = self.global_labels
        if g is not None and (not isinstance(g, np.ndarray) or g.dtype != np.int64 or g.ndim != 1 or n == 0
                              or g.size % n or g.size < n):
            found = f"{g.dtype} {g.shape}" if isinstance(g, np.ndarray) else type(g).__name__
            raise ValueError(f"Batch.global_labels: expected a numpy int64 [W*{n}] (every rank's labels), "
                             f"found {found}")
        if (self.flips is None) != (self.flipped is None):
            raise ValueError(f"Batch.flips: expected an array exactly when flipped is one, found flips "
                             f"{'None' if self.flips is None else 'an array'} and flipped "
                             f"{'None' if self.flipped is None else 'a tensor'}")
