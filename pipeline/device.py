"""Resolve the `device` argument ("auto", "cpu", "cuda", "cuda:N") to a torch.device, or say why not."""
from __future__ import annotations

import os

import torch

from common.errors import InputError


class PipelineDeviceError(InputError, RuntimeError):
    """A device was asked for that this machine cannot provide."""


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" is the current CUDA device (the rank's GPU once the trainer set it) or else the CPU."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise PipelineDeviceError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', found {device!r}") from err
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise PipelineDeviceError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', found {device!r}")
    if not torch.cuda.is_available():
        raise PipelineDeviceError(
            f"device={device!r} was asked for, but torch finds no CUDA device here "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda}); use device='cpu' or 'auto'")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if index >= torch.cuda.device_count():
        raise PipelineDeviceError(
            f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device("cuda", index)


def cpu_threads() -> int:
    """Cores this process may use (affinity aware): DALI's CPU threads, the torch backend's workers."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def threads_per_rank() -> int:
    """DALI's worker threads for one rank: the usable cores shared among the ranks torchrun started on
    this host (LOCAL_WORLD_SIZE), so that eight ranks on a 16-core host do not run 128 threads."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    try:
        ranks = max(1, int(local))
    except ValueError:
        raise ValueError(f"LOCAL_WORLD_SIZE: expected a positive integer, found {local!r}") from None
    return max(1, cpu_threads() // ranks)


def dali_threads() -> int:
    """DALI's worker threads for one rank: its cores (threads_per_rank) and one more. DALI's threads wait
    at the end of each operator's share of a batch and while the thread feeding the graph holds the GIL;
    a thread beyond the cores runs in those gaps (the 2-core CPU graph: 8-10% more images a second, for our
    loader and for DALI's own reader alike; bench pipeline stage)."""
    return threads_per_rank() + 1
