"""The image pass: encoded images through the project's decoder, the backbone and its flip.

For each image x the backbone gives e(x) and e(flip(x)) (flip of the width axis, done on the decoded
tensor); the evaluators use fused = e(x) + e(flip(x)). XNorm is insightface's: the mean L2 norm of
all raw embeddings of both passes.

An image that does not decode stops the pass with pipeline.UndecodableImageError naming the set's file
and the image's position in it (`lfw.bin: image 3 of 120 does not decode (...)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

import pipeline

# Images decoded per call of pipeline.decode_batches, in backbone batches: an error names its image by its
# place in the call, offset here by the call's start.
DECODE_BATCHES_PER_CALL = 8


@dataclass(frozen=True)
class Embeddings:
    fused: np.ndarray  # float32 [N, D], e(x) + e(flip(x)), not normalised
    xnorm: float  # mean L2 norm of the 2N raw embeddings

    def __post_init__(self):
        if self.fused.ndim != 2:
            raise ValueError(f"fused embeddings must be [N, D], found {self.fused.shape}")


def model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def pass_device(model: torch.nn.Module, device=None) -> torch.device:
    """Where the image pass runs: `device` by `pipeline.resolve_device`, or the model's own when None.

    The model must already be there; a model elsewhere is an error that says how to move it.
    """
    dev = model_device(model) if device is None else pipeline.resolve_device(device)
    if model_device(model).type != dev.type:
        raise ValueError(f"the model is on {model_device(model)} but the image pass was asked to run on {dev}; "
                         f"move the model first (model.to({str(dev)!r}))")
    return dev


def embed_batches(model: torch.nn.Module, batches: Iterable[torch.Tensor], *, total: int,
                  desc: Optional[str] = None, flip: bool = True) -> Embeddings:
    """Run normalised image batches [b,3,H,W] (on the model's device) and their flips through `model`.

    flip=False: the single pass, fused = e(x) and xnorm over the N embeddings (`python -m evaluate embed
    --no-flip`); the evaluators always fuse."""
    was_training = model.training
    model.eval()
    parts, norm_sum, count = [], 0.0, 0
    bar = tqdm(total=total, desc=desc, unit="img", disable=desc is None, leave=False)
    try:
        with torch.inference_mode():
            for images in batches:
                e = model(images).float()
                norm_sum += float(e.norm(dim=1).double().sum())
                count += e.shape[0]
                if flip:
                    ef = model(torch.flip(images, dims=[3])).float()
                    norm_sum += float(ef.norm(dim=1).double().sum())
                    count += ef.shape[0]
                    e = e + ef
                parts.append(e.cpu().numpy())
                bar.update(images.shape[0])
    finally:
        bar.close()
        model.train(was_training)
    passes = 2 if flip else 1
    if count // passes != total:
        raise RuntimeError(f"embedding pass produced {count // passes} embeddings for {total} images")
    if not parts:
        raise ValueError("embedding pass got no images")
    return Embeddings(fused=np.concatenate(parts), xnorm=norm_sum / count)


def _decoded_batches(encoded: Sequence[bytes], device: torch.device, batch_size: int,
                     size: int, source: str) -> Iterator[torch.Tensor]:
    step = batch_size * DECODE_BATCHES_PER_CALL
    n = len(encoded)
    for s in range(0, n, step):
        try:  # its batches are DALI's own memory (no copy), handed on one by one
            yield from pipeline.decode_batches(list(encoded[s:s + step]), size=size, device=device,
                                               batch_size=batch_size)
        except pipeline.UndecodableImageError as err:  # its position is within this call's slice
            if err.item is None:
                raise pipeline.UndecodableImageError(
                    f"{source}: images {s}..{min(s + step, n) - 1} of {n}: {err.reason}", reason=err.reason) from err
            raise pipeline.UndecodableImageError(f"{source}: image {s + err.item} of {n} does not decode "
                                                 f"({err.reason})", item=s + err.item, reason=err.reason) from err


def embed_encoded(model: torch.nn.Module, encoded: Sequence[bytes], *, device=None, batch_size: int = 256,
                  size: int = 112, desc: Optional[str] = None, source: str = "images") -> Embeddings:
    """Decode with `pipeline.decode_batches` (resized to size x size) and embed with flips.

    device: where to decode and run (see `pass_device`); None means the model's device. source: where the
    images were read from, named by the error for one that does not decode.
    """
    dev = pass_device(model, device)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    return embed_batches(model, _decoded_batches(encoded, dev, batch_size, size, source), total=len(encoded),
                         desc=desc)
