"""Concatenate per-sample tensors from every rank in rank order (the global batch), for head state
updates that must be identical on all ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of ranks of the default process group; 1 when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


@torch.no_grad()
def gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """For tensors sharing their first dimension (this rank's samples), return the concatenation over
    ranks 0..W-1 of each, so every rank holds the same global batch in the same order.

    Ranks may hold different numbers of samples (an uneven last batch): the sizes are exchanged first
    and the rows padded to the largest, because all_gather needs equal shapes. That exchange is one
    host sync per call. Without a process group (or with one rank) the tensors come back unchanged.
    No autograd: callers gather detached values only.
    """
    ws = world_size()
    if ws == 1:
        return tensors
    n = tensors[0].shape[0]
    for t in tensors[1:]:
        if t.shape[0] != n:
            raise ValueError(f"gather_rows: first dimensions differ: {[tuple(x.shape) for x in tensors]}")
    size = torch.tensor([n], dtype=torch.int64, device=tensors[0].device)
    sizes = [torch.zeros_like(size) for _ in range(ws)]
    dist.all_gather(sizes, size)
    counts = [int(c) for c in torch.cat(sizes).tolist()]
    longest = max(counts)
    out = []
    for t in tensors:
        padded = t.new_zeros((longest, *t.shape[1:]))
        padded[:n] = t
        parts = [torch.empty_like(padded) for _ in range(ws)]
        dist.all_gather(parts, padded)
        out.append(torch.cat([p[:c] for p, c in zip(parts, counts)]))
    return tuple(out)
