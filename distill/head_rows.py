"""The head's class centres in checkpoints: with sharded classes every rank writes its own rows, and a run
on any world size reads back the rows its head's shard holds (re-sharding on load), from either layout.

Layout (docs/DESIGN.md, checkpoints): next to `step-<9 digits>.pt`, the folder `step-<9 digits>.head/` holds
`rank-<r>-of-<W>.pt` per rank: {start, stop, num_classes, centres [stop-start, D], and with distill.mode
none momentum [stop-start, D] (SGD's buffer, once a step was taken)}. The main file's `head_rows` entry names
them with their bounds; its `head` lacks `centres` and its `optimizer` state lacks the centres' entry.

Why per-rank files and not one [C, D] tensor gathered on rank 0: at 2M classes x 512 the centres are
4.1 GB (8.2 GB with the momentum); gathering them would need that much on rank 0 and a write of all of it
while every other rank waits. Per-rank files are written in parallel, each rank 1/W of it, so a save
stalls the ranks for about the slowest rank's own write (measured in docs/clusters.md). Each file is written
atomically and the main file, written last by rank 0 after a barrier, commits them: a crash leaves no
main file naming a missing row file. A run that does not shard its classes (every rank holds every centre)
keeps them in the main file; either layout loads into a head of any shard.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from common.files import write_atomic
from models import CheckpointError

from . import checkpoint, distributed
from .class_shard import bounds


def rows_file(rank: int, world_size: int) -> str:
    return f"rank-{rank}-of-{world_size}.pt"


def centres_index(optimizer: torch.optim.Optimizer, head: nn.Module) -> Optional[int]:
    """The centres' number in the optimizer's state dict (parameters numbered across groups in order), or
    None when they are no parameter (AdaDistill's buffer)."""
    number = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p is head.centres:
                return number
            number += 1
    return None


def save_parts(output, step: int, head: nn.Module, optimizer: torch.optim.Optimizer, ctx: distributed.DistContext,
               *, row_files: Optional[bool] = None) -> tuple[dict, dict, Optional[dict]]:
    """(head state, optimizer state, head_rows entry) for the main checkpoint file. row_files: the rows go to
    per-rank files (a run whose classes are sharded, distill.shard_classes; None: when the head has several
    shards), else they stay in the head's and the optimizer's state. Collective with row files: every rank
    writes its rows first, then all wait until every rank's are on disk."""
    head_state, optimizer_state = head.state_dict(), optimizer.state_dict()
    shard = head.shard
    if not (shard.world_size > 1 if row_files is None else row_files):
        return head_state, optimizer_state, None
    index = centres_index(optimizer, head)
    rows = {"start": shard.start, "stop": shard.stop, "num_classes": shard.num_classes,
            "centres": head.centres.detach().cpu()}
    momentum = optimizer.state.get(head.centres, {}).get("momentum_buffer") if index is not None else None
    if momentum is not None:
        rows["momentum"] = momentum.detach().cpu()
    folder = checkpoint.rows_dir(output, step)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / rows_file(shard.rank, shard.world_size), lambda f: torch.save(rows, f))
    distributed.barrier(ctx)  # every rank's rows are on disk before rank 0's main file names them
    head_state = {k: v for k, v in head_state.items() if k != "centres"}
    if index is not None:
        optimizer_state = {**optimizer_state, "state": {k: v for k, v in optimizer_state["state"].items() if k != index}}
    entry = {"dir": folder.name, "world_size": shard.world_size, "num_classes": shard.num_classes,
             "files": [rows_file(r, shard.world_size) for r in range(shard.world_size)],
             "bounds": [list(bounds(shard.num_classes, shard.world_size, r)) for r in range(shard.world_size)],
             "momentum": momentum is not None}
    return head_state, optimizer_state, entry


def restore(path: Path, state: dict, head: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load the checkpoint's head and optimizer state into `head` and `optimizer`, taking the rows of the
    head's shard from whichever layout the checkpoint has."""
    start, stop, c = head.shard.start, head.shard.stop, head.num_classes
    index = centres_index(optimizer, head)
    head_state = {**state["head"], "centres": read_rows(path, state, "centres", start, stop, index, c)}
    momentum = read_rows(path, state, "momentum", start, stop, index, c) if index is not None else None
    opt_state = {**state["optimizer"], "state": {k: v for k, v in state["optimizer"]["state"].items() if k != index}}
    head.load_state_dict(head_state)
    if momentum is not None:  # the rows' SGD buffer in its place in the optimizer's state
        opt_state["state"][index] = {"momentum_buffer": momentum}
    optimizer.load_state_dict(opt_state)


def read_rows(path: Path, state: dict, key: str, start: int, stop: int, index: Optional[int],
              num_classes: int) -> Optional[torch.Tensor]:
    """Rows [start, stop) of the checkpoint's `key` ("centres", or "momentum": the centres' SGD buffer,
    number `index` in the optimizer's state) of a head of `num_classes` classes, from the main file or the row files; None for a momentum
    the checkpoint does not have (no step taken yet)."""
    entry = state.get("head_rows")
    if entry is None:  # replicated: the full tensors are in the main file
        if key == "centres":
            full = state["head"].get("centres")
            if full is None:
                raise CheckpointError(f"{path}: the head has no centres and no head_rows entry")
        else:
            full = state["optimizer"]["state"].get(index, {}).get("momentum_buffer")
            if full is None:
                return None
        _check_classes(path, full.shape[0], num_classes)
        return full[start:stop].clone()
    if key == "momentum" and not entry["momentum"]:
        return None
    _check_classes(path, int(entry["num_classes"]), num_classes)
    folder = Path(path).parent / entry["dir"]
    parts = []
    for name, (a, b) in zip(entry["files"], entry["bounds"]):
        lo, hi = max(a, start), min(b, stop)
        if lo >= hi:
            continue
        file = folder / name
        try:  # mmap: a rank reads the rows it needs, not the whole file
            rows = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except FileNotFoundError:
            raise CheckpointError(f"{path} names the head rows file {file}, which is missing (copy the folder "
                                  f"{folder.name}/ together with the checkpoint)") from None
        except Exception as e:
            raise CheckpointError(f"cannot read head rows file {file}: {type(e).__name__}: {e}") from e
        if (rows.get("start"), rows.get("stop")) != (a, b) or key not in rows:
            raise CheckpointError(f"{file}: expected the {key} of classes [{a}, {b}), found classes "
                                  f"[{rows.get('start')}, {rows.get('stop')}) with entries {sorted(rows)}")
        parts.append(rows[key][lo - a:hi - a].clone())
    return torch.cat(parts)


def _check_classes(path: Path, saved: int, expected: int) -> None:
    if saved != expected:
        raise CheckpointError(f"{path}: the checkpoint's head holds {saved} classes, this run has {expected}")
