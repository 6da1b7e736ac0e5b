"""The backbone registry: a builder per name, looked up by `build(name, embedding_size)`; and the weight
initialisation the builders share."""
from __future__ import annotations

from typing import Callable, Dict, List

from torch import nn

from common.errors import InputError

Builder = Callable[[int], nn.Module]

_BUILDERS: Dict[str, Builder] = {}


class UnknownModelError(InputError, ValueError):
    """A backbone name that no builder is registered under."""


def register(name: str) -> Callable[[Builder], Builder]:
    """Register `builder(embedding_size) -> nn.Module` under `name`; a second builder for a name raises."""
    if not name or name != name.strip() or name != name.lower():
        raise ValueError(f"models.register: name must be non-empty lower-case without spaces, found {name!r}")

    def decorate(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"models.register: {name!r} is already registered by "
                             f"{_BUILDERS[name].__module__}.{_BUILDERS[name].__qualname__}")
        _BUILDERS[name] = builder
        return builder

    return decorate


def names() -> List[str]:
    """All registered backbone names, sorted."""
    return sorted(_BUILDERS)


def build(name: str, embedding_size: int = 512) -> nn.Module:
    """A freshly initialised backbone: RGB [B,3,112,112] in [-1,1] -> raw embedding [B,embedding_size]."""
    if name not in _BUILDERS:
        raise UnknownModelError(f"unknown backbone {name!r}; known: {', '.join(names())}")
    if isinstance(embedding_size, bool) or not isinstance(embedding_size, int) or embedding_size <= 0:
        raise ValueError(f"models.build({name!r}): embedding_size must be a positive int, found {embedding_size!r}")
    return _BUILDERS[name](embedding_size)


def kaiming_fan_out_(model: nn.Module) -> None:
    """Kaiming normal (fan_out) for conv and linear weights, zero biases, BatchNorm2d at identity: the
    initialisation of CVLFace's IR nets and AdaDistill's MobileFaceNet."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
