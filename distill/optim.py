"""The optimisation recipe: the run's derived numbers and the lr at every step (`plan`), and SGD over the
student and the head with weight decay as the originals apply it (`build_optimizer`).

The rules are the originals' (configs.schema.TrainConfig's docstring states them): the peak lr is
`train.lr / lr_batch * global_batch` (their `cfg.lr / 512 * cfg.batch_size * world_size`, same order
of operations, so the floats are equal; the global batch counts every micro-batch of train.accumulate); a multistep decay epoch m applies from the first step of the
m-th epoch (their `m - 1 <= epoch`, 0-based); the quadratic warmup is the AdaFace-KD code's per-step
`((epoch + batch / steps_per_epoch + 1) / (warmup_epochs + 1)) ** 2`; every parameter is decayed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from configs import TrainConfig


@dataclass(frozen=True)
class Plan:
    """Values derived once from the config, the world size and the loader's length.

    The lr is a pure function of the step, so resuming needs only the step, and changing
    `train.max_steps` (where the run stops) never changes the schedule.
    """
    global_batch: int             # train.batch_size x train.accumulate x ranks: the samples of one optimizer step
    steps_per_epoch: int          # optimizer steps
    epochs: int
    lr: float                     # peak lr: train.lr / train.lr_batch * global_batch
    warmup: str                   # "linear" or "quadratic"
    warmup_epochs: float
    warmup_steps: int             # the steps whose progress (step / steps_per_epoch) is below warmup_epochs
    decay_steps: tuple[int, ...]  # multistep: the lr is multiplied by decay_factor from each of these steps
    decay_factor: float
    schedule: str
    stop_step: int                # the run stops once this many steps are done
    accumulate: int = 1           # micro-batches per optimizer step (train.accumulate)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def lr_at(self, step: int) -> float:
        """The lr for step `step` (0-based): the warmup while it lasts, then multistep or cosine decay."""
        if step < self.warmup_steps:
            if self.warmup == "quadratic":
                epoch, batch = divmod(step, self.steps_per_epoch)
                return self.lr * ((epoch + batch / self.steps_per_epoch + 1) / (self.warmup_epochs + 1)) ** 2
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            done = min(1.0, (step - self.warmup_steps) / span)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * done))
        passed = sum(1 for d in self.decay_steps if step >= d)
        return self.lr * self.decay_factor ** passed

    def epoch_start_lr(self) -> list[float]:
        """The lr at the first step of every epoch."""
        return [self.lr_at(e * self.steps_per_epoch) for e in range(self.epochs)]

    def state_dict(self) -> dict:
        """What the checkpoint's `scheduler` entry records (the lr itself is recomputed from the step)."""
        return {"schedule": self.schedule, "lr": self.lr, "warmup": self.warmup,
                "warmup_epochs": self.warmup_epochs, "warmup_steps": self.warmup_steps,
                "decay_steps": list(self.decay_steps), "decay_factor": self.decay_factor,
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps}


def plan(train: TrainConfig, *, world_size: int, steps_per_epoch: int) -> Plan:
    """Derive the Plan. Epoch-valued keys (warmup_epochs, decay_epochs) become steps of this run."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch: expected >= 1, found {steps_per_epoch}")
    global_batch = rank_batch(train) * world_size
    total = train.epochs * steps_per_epoch
    stop = total if train.max_steps == 0 else train.max_steps
    return Plan(
        global_batch=global_batch,
        steps_per_epoch=steps_per_epoch,
        epochs=train.epochs,
        lr=train.lr / train.lr_batch * global_batch,
        warmup=train.warmup,
        warmup_epochs=train.warmup_epochs,
        warmup_steps=_warmup_steps(train.warmup_epochs, steps_per_epoch),
        decay_steps=tuple(round((m - 1) * steps_per_epoch) for m in train.decay_epochs),
        decay_factor=train.decay_factor,
        schedule=train.schedule,
        stop_step=stop,
        accumulate=train.accumulate,
    )


def rank_batch(train: TrainConfig) -> int:
    """The samples one rank takes in one optimizer step: train.accumulate micro-batches of train.batch_size
    (the loader hands them over as one batch, so the data order and flips are the 1 x accumulate*batch run's)."""
    return train.batch_size * train.accumulate


def _warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    """How many steps s have s / steps_per_epoch < warmup_epochs (the originals' `epoch < warmup_epoch`
    for a whole number of epochs); the loop corrects ceil() where the product rounds up (0.2 * 55)."""
    steps = math.ceil(warmup_epochs * steps_per_epoch)
    while steps > 0 and (steps - 1) / steps_per_epoch >= warmup_epochs:
        steps -= 1
    while steps / steps_per_epoch < warmup_epochs:
        steps += 1
    return steps


def decay_groups(modules: Iterable[nn.Module], weight_decay_on: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, undecayed) trainable parameters of `modules`.

    "all": every parameter is decayed, as in fdbtrs/AdaDistill, the AdaFace-KD code and arcface_torch
    (`SGD(params, weight_decay=cfg.weight_decay)`). "weights": none on 1-D parameters (BatchNorm and
    PReLU weights, biases), the split that timm and many ImageNet recipes use; an explicit choice, since
    it changes the recipe (26,880 of MobileFaceNet's parameters)."""
    decayed, undecayed = [], []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                (undecayed if weight_decay_on == "weights" and p.ndim <= 1 else decayed).append(p)
    return decayed, undecayed


def build_optimizer(modules: Iterable[nn.Module], train: TrainConfig, lr: float) -> torch.optim.SGD:
    """SGD(momentum) over the trainable parameters of `modules`; one group per weight decay (an empty
    undecayed group is left out, so "all" gives the originals' single group)."""
    decayed, undecayed = decay_groups(modules, train.weight_decay_on)
    groups = [{"params": decayed, "weight_decay": train.weight_decay}]
    if undecayed:
        groups.append({"params": undecayed, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=train.momentum)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
