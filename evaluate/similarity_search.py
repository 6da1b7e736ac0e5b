"""Every pair of rows of a unit-vector table whose cosine similarity is above a threshold, found in blocks.

The audit compares every class centre with every other (85,742 MS1M classes: 3.7e9 pairs) and every
sampled image with every other (near-duplicates). The full [N, N] matrix would take N^2 x 4 bytes (29 GB
for 85k rows), so the upper triangle is computed a tile of [block, block] at a time with torch.matmul (on
the GPU where there is one): memory is O(block^2 + N x D), whatever N; time is O(N^2 D).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from common.errors import InputError

DEFAULT_BLOCK = 4096  # a [4096, 4096] float32 tile is 64 MB
MAX_FOUND = 5_000_000  # more means a threshold inside the bulk of the distribution, not a finding


class TooManyPairsError(InputError, ValueError):
    """A threshold so low that the search finds more than MAX_FOUND pairs."""


@dataclass(frozen=True)
class ClosePairs:
    """Pairs i < j with similarity above the threshold, most similar first."""

    i: np.ndarray  # int64 [P]
    j: np.ndarray  # int64 [P]
    similarity: np.ndarray  # float32 [P]

    def __post_init__(self):
        if not self.i.shape == self.j.shape == self.similarity.shape:
            raise ValueError(f"pairs: shapes {self.i.shape}, {self.j.shape}, {self.similarity.shape} differ")

    def __len__(self) -> int:
        return int(self.i.size)


def close_pairs(x: np.ndarray, threshold: float, *, groups: Optional[np.ndarray] = None,
                block: int = DEFAULT_BLOCK, device="cpu", progress: bool = True,
                desc: str = "similarity search", max_found: int = MAX_FOUND) -> ClosePairs:
    """Pairs of rows of x (float32 [N, D], unit rows) with x_i . x_j > threshold, i < j; with `groups`
    (int [N]), only pairs of different groups (e.g. images of different classes)."""
    if block < 1:
        raise ValueError(f"block must be >= 1, found {block}")
    n = x.shape[0]
    dev = torch.device(device)
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
    g = torch.from_numpy(np.asarray(groups, dtype=np.int64)).to(dev) if groups is not None else None
    starts = list(range(0, n, block))
    tiles = len(starts) * (len(starts) + 1) // 2
    found_i, found_j, found_s, count = [], [], [], 0
    bar = tqdm(total=tiles, desc=desc, unit="tile", disable=not progress)
    try:
        for a in starts:
            rows = t[a:a + block]
            for b in starts[starts.index(a):]:
                sims = rows @ t[b:b + block].T  # [rows, cols]
                hit = sims > threshold
                if a == b:  # the diagonal tile: its upper triangle only (i < j)
                    hit &= torch.ones_like(hit).triu_(diagonal=1)
                if g is not None:
                    hit &= g[a:a + block, None] != g[None, b:b + block]
                r, c = torch.nonzero(hit, as_tuple=True)
                count += r.numel()
                if count > max_found:
                    raise TooManyPairsError(f"{desc}: more than {max_found} pairs above {threshold:.4f}: that "
                                            f"threshold is inside the bulk of the similarities; raise it")
                if r.numel():
                    found_s.append(sims[r, c].cpu().numpy())
                    found_i.append((r + a).cpu().numpy())
                    found_j.append((c + b).cpu().numpy())
                bar.update(1)
    finally:
        bar.close()
    if not found_i:
        return ClosePairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    i, j, s = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
    order = np.lexsort((j, i, -s))
    return ClosePairs(i[order].astype(np.int64), j[order].astype(np.int64), s[order].astype(np.float32))
