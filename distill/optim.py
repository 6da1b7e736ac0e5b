"""SGD with momentum over the student and the head, weight decay as the originals apply it (or split)."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from configs import TrainConfig


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
