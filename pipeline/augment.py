"""Optional augmentations (AdaFace's recipe) and their per-sample parameters, drawn from our own seed.

Kim et al., "AdaFace" (CVPR 2022), train with three extra augmentations, each applied to a sample
with its own probability (0.2 each in their recipe): a random crop resized back to full size, a low
resolution copy (downscale by a random ratio, then upscale), and photometric jitter (brightness,
contrast, saturation). All three are off by default.

Every random number is drawn here with numpy from (seed, epoch, step, rank), never by a DALI random
op: DALI's generators advance with every batch run, so a run resumed at (epoch, step) would not see the
same flips and crops. Both backends receive the very same parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Mapping, Optional, Union

import numpy as np

from common.errors import InputError
from configs import AugmentConfig

# AdaFace's ranges (their `augmenter.py`): RandomResizedCrop scale and ratio, downscale ratio, jitter.
CROP_SCALE = (0.2, 1.0)
CROP_RATIO = (0.75, 4.0 / 3.0)
LOW_RES_RATIO = (0.2, 1.0)
JITTER = 0.5  # brightness, contrast and saturation factors in [1 - JITTER, 1 + JITTER]


class UnknownAugmentationError(InputError, ValueError):
    """An augmentation name that this pipeline does not offer."""


# The probability that each augmentation is applied to a sample (0 = off): the run config's own section
# type, taken as it is (one type, validated once, when the config or the mapping is read).
Augment = AugmentConfig


def parse_augment(augment: Union[None, Augment, Mapping[str, float]]) -> Augment:
    """None -> all off; a mapping name -> probability; an unknown name raises, listing the known ones."""
    if augment is None:
        return Augment()
    if isinstance(augment, Augment):
        return augment
    if not isinstance(augment, Mapping):
        raise UnknownAugmentationError(
            f"augment: expected None, pipeline.Augment or a mapping name -> probability, found {augment!r}")
    known = [f.name for f in fields(Augment)]
    unknown = sorted(set(augment) - set(known))
    if unknown:
        raise UnknownAugmentationError(f"augment: unknown augmentation(s) {unknown}; known: {known}")
    return Augment(**{k: float(v) for k, v in augment.items()})


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample parameters of one batch; identity values where a sample is not augmented.

    roi_start, roi_end: [B,2] float32 (y, x) relative crop window; low_res_side: [B] float32 pixels;
    brightness, contrast, saturation: [B] float32 factors.
    """

    roi_start: np.ndarray
    roi_end: np.ndarray
    low_res_side: np.ndarray
    brightness: np.ndarray
    contrast: np.ndarray
    saturation: np.ndarray


def draw_params(aug: Augment, rng: np.random.Generator, n: int, size: int) -> Optional[AugmentParams]:
    """Draw one batch's parameters; None when every augmentation is off."""
    if not aug.any:
        return None
    # Crop: area fraction and aspect ratio as torchvision's RandomResizedCrop, clipped to the image.
    area = rng.uniform(*CROP_SCALE, n)
    log_ratio = rng.uniform(np.log(CROP_RATIO[0]), np.log(CROP_RATIO[1]), n)
    w = np.clip(np.sqrt(area * np.exp(log_ratio)), 0.0, 1.0)
    h = np.clip(np.sqrt(area / np.exp(log_ratio)), 0.0, 1.0)
    y0 = rng.uniform(0.0, 1.0, n) * (1.0 - h)
    x0 = rng.uniform(0.0, 1.0, n) * (1.0 - w)
    do_crop = rng.random(n) < aug.crop
    start = np.where(do_crop[:, None], np.stack([y0, x0], 1), 0.0).astype(np.float32)
    end = np.where(do_crop[:, None], np.stack([y0 + h, x0 + w], 1), 1.0).astype(np.float32)
    # Low resolution: the side of the downscaled copy, at least 4 pixels.
    side = np.maximum(4.0, np.round(size * rng.uniform(*LOW_RES_RATIO, n)))
    side = np.where(rng.random(n) < aug.low_res, side, float(size)).astype(np.float32)
    jitter = rng.uniform(1.0 - JITTER, 1.0 + JITTER, (3, n))
    jitter = np.where(rng.random(n) < aug.photometric, jitter, 1.0).astype(np.float32)
    return AugmentParams(start, end, side, jitter[0], jitter[1], jitter[2])
