"""Margin logits: turn cosines to the class centres into the scaled logits of a margin softmax.

Every margin here is a small frozen dataclass (its hyper-parameters) with `target(cos_y, z_hat)` (the
target logit's cosine after the margin) and `logits(cos, labels, z_hat)` (`margin_logits`, shared by
all), registered by name in `MARGINS`. The stateful parts (class centres,
AdaFace's norm statistics) live in `distill.heads.Head`; these functions are pure.

Shapes: cos [B, C] (cosine of each normalised student embedding to each normalised centre),
labels [B] int64, z_hat [B] (AdaFace's norm-based scaler, detached) or None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Protocol

import torch

from configs.schema import check_margin

# eps of the clamps before acos and of AdaFace's std denominator, as in mk-minchul/AdaFace head.py.
EPS = 1e-3


class Margin(Protocol):
    s: float
    m: float
    uses_norms: ClassVar[bool]
    clamps_cosines: ClassVar[bool]

    def target(self, cos_y: torch.Tensor, z_hat: torch.Tensor | None) -> torch.Tensor: ...

    def logits(self, cos: torch.Tensor, labels: torch.Tensor, z_hat: torch.Tensor | None) -> torch.Tensor: ...


MARGINS: dict[str, Callable[..., Margin]] = {}


def register(name: str):
    """Class decorator: register a margin under `name`; a duplicate name is an error."""

    def wrap(cls):
        if name in MARGINS:
            raise ValueError(f"margin {name!r} is registered twice ({MARGINS[name].__name__} and {cls.__name__})")
        MARGINS[name] = cls
        return cls

    return wrap


def _with_target(cos: torch.Tensor, labels: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """cos with column labels[i] of row i replaced by target[i] (out of place, so autograd sees both)."""
    return cos.scatter(1, labels[:, None], target[:, None])


def margin_logits(margin: Margin, cos: torch.Tensor, labels: torch.Tensor, z_hat: torch.Tensor | None = None,
                  owned: torch.Tensor | None = None) -> torch.Tensor:
    """s * cos with the margin on each row's target column: every margin's `logits`.

    `owned` (bool [B], or None for all rows) is for a sharded head, whose `cos` holds only its own classes'
    columns: a row whose class is elsewhere keeps its cosine at column labels[i] (any valid column, 0 by
    convention). torch.where sends that row's gradient to the gathered cosine itself, so values and
    gradients equal the full head's columns exactly."""
    if margin.clamps_cosines:
        cos = cos.clamp(-1 + EPS, 1 - EPS)
    cos_y = cos.gather(1, labels[:, None]).squeeze(1)
    target = margin.target(cos_y, z_hat)
    if owned is not None:
        target = torch.where(owned, target, cos_y)
    return margin.s * _with_target(cos, labels, target)


@register("arcface")
@dataclass(frozen=True)
class ArcFaceMargin:
    """ArcFace, additive angular margin (Deng et al., CVPR 2019, arXiv:1801.07698, Eq. 3):
    target logit s*cos(theta_y + m), others s*cos(theta_j)."""

    s: float = 64.0
    m: float = 0.5
    uses_norms: ClassVar[bool] = False
    clamps_cosines: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_margin("arcface: option ", s=self.s, m=self.m)

    def target(self, cos_y, z_hat=None):
        # The originals (AdaDistill utils/losses.py, arcface_torch) take acos of values that rounding
        # can push past +-1, and acos' gradient is infinite at +-1: clamp to [-1+eps, 1-eps] first.
        theta = torch.acos(cos_y.clamp(-1 + EPS, 1 - EPS))
        return torch.cos(theta + self.m)

    def logits(self, cos, labels, z_hat=None):
        return margin_logits(self, cos, labels, z_hat)


@register("cosface")
@dataclass(frozen=True)
class CosFaceMargin:
    """CosFace / large margin cosine loss (Wang et al., CVPR 2018, arXiv:1801.09414, Eq. 4):
    target logit s*(cos(theta_y) - m), others s*cos(theta_j). No acos, so no clamp is needed."""

    s: float = 64.0
    m: float = 0.35
    uses_norms: ClassVar[bool] = False
    clamps_cosines: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_margin("cosface: option ", s=self.s, m=self.m)

    def target(self, cos_y, z_hat=None):
        return cos_y - self.m

    def logits(self, cos, labels, z_hat=None):
        return margin_logits(self, cos, labels, z_hat)


@register("adaface")
@dataclass(frozen=True)
class AdaFaceMargin:
    """AdaFace, quality-adaptive margin (Kim et al., CVPR 2022, arXiv:2204.00964, Sec. 3.3-3.4):
    with z_hat the feature-norm scaler, g_angle = -m*z_hat and g_add = m + m*z_hat, the target logit is
    s*(cos(clamp(theta_y + g_angle, eps, pi-eps)) - g_add) and the others s*cos(theta_j); all cosines
    are first clamped to [-1+eps, 1-eps], as in mk-minchul/AdaFace head.py."""

    s: float = 64.0
    m: float = 0.4
    h: float = 0.333
    t_alpha: float = 0.01
    uses_norms: ClassVar[bool] = True
    clamps_cosines: ClassVar[bool] = True  # every cosine, the others' too

    def __post_init__(self) -> None:
        check_margin("adaface: option ", s=self.s, m=self.m, h=self.h, t_alpha=self.t_alpha)

    def target(self, cos_y, z_hat=None):
        if z_hat is None:
            raise ValueError("adaface: logits need z_hat, the norm scaler of each sample")
        theta = torch.acos(cos_y) - self.m * z_hat  # theta_y + g_angle
        return torch.cos(theta.clamp(EPS, math.pi - EPS)) - (self.m + self.m * z_hat)

    def logits(self, cos, labels, z_hat=None):
        return margin_logits(self, cos, labels, z_hat)


def norm_scaler(norms: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, h: float,
                shift: torch.Tensor | float = 0.0) -> torch.Tensor:
    """AdaFace's z_hat = clamp(h*(n - mu)/(sigma + eps) + shift, -1, 1) for clipped, detached norms.

    `shift` is the geometry-aware term of AdaFace KD (w_eff * geom, see distill.heads); 0 for AdaFace.
    """
    return (h * (norms - mean) / (std + EPS) + shift).clamp(-1.0, 1.0)


def clip_norms(norms: torch.Tensor) -> torch.Tensor:
    """Feature norms clipped to [0.001, 100] and detached: AdaFace uses them as a quality proxy only,
    so no gradient flows through the margin into the norm (mk-minchul/AdaFace head.py)."""
    return norms.detach().clamp(0.001, 100.0)
