"""SGD with the weight-decay split used by insightface/arcface_torch and AdaDistill."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from configs import TrainConfig


def build_optimizer(modules: Iterable[nn.Module], train: TrainConfig, lr: float) -> torch.optim.SGD:
    """SGD(momentum) over the trainable parameters of `modules`: weight decay on conv/linear weights
    and class centres (ndim >= 2), none on BatchNorm and PReLU parameters and biases (ndim <= 1),
    whose decay only shrinks scales the next layer undoes."""
    decay, no_decay = [], []
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=train.momentum)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
