"""The ranks: process-group setup from torchrun's environment (or a single process without it), teardown,
and the few collectives the loop and the head use."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from common.files import OutputLockedError, output_lock


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup() -> DistContext:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (torchrun sets them) and start the process group: NCCL when CUDA
    is available, gloo on the CPU. Without those variables, or with WORLD_SIZE=1, no group is started."""
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < world_size:
        raise RuntimeError(f"environment: RANK={rank} is outside WORLD_SIZE={world_size}")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        # A long timeout: rank 0 runs the verification sets while the others wait at a barrier.
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(minutes=60))
    return DistContext(rank, world_size, local_rank, device)


def teardown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def any_bits(ctx: DistContext, flags: torch.Tensor, nbits: int = 3) -> int:
    """The OR over ranks of the low `nbits` bits of the int scalar `flags` (on the device): one small
    all-reduce (MAX per bit: NCCL has no bitwise OR) and one host sync."""
    bits = (flags.reshape(1) >> torch.arange(nbits, device=flags.device)) & 1
    if ctx.distributed:
        dist.all_reduce(bits, op=dist.ReduceOp.MAX)
    return int(sum(int(b) << i for i, b in enumerate(bits.tolist())))


def all_mean(ctx: DistContext, values: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a float tensor (used for logged figures only, every log_every steps)."""
    values = values.detach().clone()
    if ctx.distributed:
        dist.all_reduce(values)
        values /= ctx.world_size
    return values


def rank0_lock(ctx: DistContext, folder, job: str) -> contextlib.ExitStack:
    """Rank 0 holds `folder`'s output lock (common.files.output_lock) for the `with` block: one job
    writes there. Every rank learns whether rank 0 got it, so that all stop together when it did not
    (the others would otherwise wait at their first collective)."""
    stack, refused = contextlib.ExitStack(), None
    if ctx.is_main:
        try:
            stack.enter_context(output_lock(folder, job))
        except OutputLockedError as error:
            refused = error
    if any_bits(ctx, torch.tensor(int(refused is not None), device=ctx.device), nbits=1):
        stack.close()
        raise refused or OutputLockedError(f"{folder}: rank 0 could not lock this folder; see its error")
    return stack


def world_size() -> int:
    """Ranks of the default process group; 1 when torch.distributed is not initialised. For the head,
    which is called without a DistContext (it also runs outside the loop)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """This process's rank in the default process group; 0 when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


@torch.no_grad()
def gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """For tensors sharing their first dimension (this rank's samples), the concatenation over ranks
    0..W-1 of each, so every rank holds the same global batch in the same order.

    Every rank holds the same number of rows: the loader gives each rank B samples a step by
    construction (pipeline.order drops the tail), so no sizes are exchanged (an exchange would cost a
    host sync per call). Without a process group (or with one rank) the tensors come back unchanged.
    No autograd: callers gather detached values only."""
    ws = world_size()
    if ws == 1:
        return tensors
    n = tensors[0].shape[0]
    for t in tensors[1:]:
        if t.shape[0] != n:
            raise ValueError(f"gather_rows: first dimensions differ: {[tuple(x.shape) for x in tensors]}")
    out = []
    for t in tensors:
        parts = [torch.empty_like(t) for _ in range(ws)]
        dist.all_gather(parts, t.contiguous())
        out.append(torch.cat(parts))
    return tuple(out)


def gather_objects(ctx: DistContext, obj) -> list:
    """Every rank's `obj`, in rank order (on every rank)."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_state(ctx: DistContext, module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (the head is not in DDP, which would do it)."""
    if not ctx.distributed:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise RuntimeError(f"environment: {name}={text!r} is not an integer") from None
