"""AdaDistill's teacher-driven class centres: per-sample mixing coefficients and the in-place update.

AdaDistill (Boutros et al., ECCV 2024, arXiv:2407.01332, Sec. 3, "adaptive class centres"): the class
centres are not learned by the optimizer; each step moves the centre of every sample's class towards
that sample's normalised teacher embedding f_t,

    W_y <- alpha * W_y + (1 - alpha) * f_t

with alpha = clamp(cos(f_s, f_t), 1e-6, 1) ("plain"), or the weighted alpha' =
clamp(cos(f_s, f_t) * lambda, 1e-6, 1), lambda = clamp(cos(W_y, f_t), 1e-6, 1) ("weighted", the
paper's default). A student that already agrees with its teacher (alpha near 1) leaves the centre
nearly unchanged; early on the centres follow the teacher. The rows W are raw (initialised
N(0, 0.01^2), as in the original) and normalised only where cosines are taken.

Duplicate labels (our rule; the original's scatter keeps whichever write lands last): every sample's
alpha is computed from the centres as they were before this step, then the updates of the samples
of one class are composed in batch order (in the global batch: rank, then position), exactly as a
loop `for i in batch: W[y_i] = alpha_i * W[y_i] + (1 - alpha_i) * f_t[i]` would. Samples of other
classes never affect a class's result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

ALPHA_MIN = 1e-6  # the original's lower clamp of alpha and lambda


@dataclass(frozen=True)
class Coefficients:
    """Per-sample quantities of one step, all [B] and detached."""

    cos_st: torch.Tensor  # cos(f_s, f_t) clamped to [-1, 1]
    lam: torch.Tensor  # cos(W_y, f_t) clamped to [1e-6, 1], from the centres before the update
    alpha: torch.Tensor  # the mixing weight of the old centre


@torch.no_grad()
def coefficients(centres: Optional[torch.Tensor], labels: Optional[torch.Tensor], f_s: torch.Tensor,
                 f_t: torch.Tensor, weighted: bool, lam: Optional[torch.Tensor] = None) -> Coefficients:
    """alpha (plain) or alpha' (weighted) for each sample; f_s and f_t are unit rows [B, D]. lam: each
    sample's cos(W_y, f_t) where the caller has it (a sharded head's, from the rank owning the class),
    else computed from `centres[labels]`."""
    cos_st = (f_s * f_t).sum(dim=1).clamp(-1.0, 1.0)
    if lam is None:
        lam = (F.normalize(centres[labels], dim=1) * f_t).sum(dim=1)
    lam = lam.clamp(ALPHA_MIN, 1.0)
    alpha = (cos_st * lam if weighted else cos_st).clamp(ALPHA_MIN, 1.0)
    return Coefficients(cos_st=cos_st, lam=lam, alpha=alpha)


@torch.no_grad()
def occurrence(labels: torch.Tensor) -> torch.Tensor:
    """For each sample, how many earlier samples of the batch carry the same label ([B] int64)."""
    order = torch.sort(labels, stable=True).indices  # by label, ties kept in batch order
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_group = torch.arange(labels.numel(), device=labels.device) - torch.repeat_interleave(starts, counts)
    result = torch.empty_like(rank_in_group)
    result[order] = rank_in_group
    return result


@dataclass(frozen=True)
class Rounds:
    """The samples of a batch grouped by round: round r holds every sample that is the r-th of its label
    (so the rows one round writes are distinct), in batch order. `order` [N] lists the samples round by
    round; round r is order[bounds[r]:bounds[r + 1]]."""

    order: torch.Tensor            # int64 [N], on the centres' device
    bounds: tuple[int, ...]        # host ints, len = rounds + 1


def rounds_from_host(labels: np.ndarray, device: torch.device) -> Rounds:
    """Rounds of a batch whose labels the host knows (the loader hands the global batch's labels over):
    computed with numpy, sent to the device in one copy from pinned memory, so the update needs no
    device-to-host sync."""
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.size
    by_label = np.argsort(labels, kind="stable")  # ties kept in batch order
    sorted_labels = labels[by_label]
    first = np.r_[True, sorted_labels[1:] != sorted_labels[:-1]] if n else np.zeros(0, bool)
    nth = np.empty(n, np.int64)
    nth[by_label] = np.arange(n) - np.maximum.accumulate(np.where(first, np.arange(n), 0))
    order = np.argsort(nth, kind="stable")  # round by round, batch order within a round
    counts = np.bincount(nth, minlength=1) if n else np.zeros(0, np.int64)
    bounds = tuple(int(b) for b in np.r_[0, np.cumsum(counts)])
    return Rounds(host_to_device(order, device), bounds)


def host_to_device(host: np.ndarray, device: torch.device) -> torch.Tensor:
    """An int64 host array on the device: one copy from pinned memory, which does not wait for the device."""
    tensor = torch.from_numpy(np.ascontiguousarray(host, dtype=np.int64))
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def rounds_on_device(labels: torch.Tensor) -> Rounds:
    """Rounds computed from device labels: costs host syncs (the count of rounds, each round's size);
    for callers that have no host copy of the labels."""
    nth = occurrence(labels)
    order = torch.sort(nth, stable=True).indices
    counts = torch.bincount(nth).tolist()
    return Rounds(order, tuple(int(b) for b in np.r_[0, np.cumsum(counts)]))


@torch.no_grad()
def update_centres(centres: torch.Tensor, labels: torch.Tensor, f_t: torch.Tensor, alpha: torch.Tensor,
                   rounds: Optional[Rounds] = None) -> None:
    """In place: W_y <- alpha * W_y + (1 - alpha) * f_t for every sample, duplicates in batch order.

    Vectorised by rounds: round r applies every sample that is the r-th of its label in the batch, so
    the rows written within a round are distinct and the rounds compose in batch order. On real data
    there are 1-3 rounds. `rounds` from the host's labels (rounds_from_host) keeps the update free of
    host syncs; without it they are computed on the device (rounds_on_device).
    """
    if labels.numel() == 0:
        return
    f_t = f_t.to(centres.dtype)
    alpha = alpha.to(centres.dtype)
    rounds = rounds or rounds_on_device(labels)
    for start, stop in zip(rounds.bounds[:-1], rounds.bounds[1:]):
        sel = rounds.order[start:stop]
        rows = labels[sel]
        a = alpha[sel, None]
        centres.index_copy_(0, rows, a * centres[rows] + (1 - a) * f_t[sel])
