"""Parity of an exported model with the checkpoint it came from, on decoded faces.

The faces are decoded with pipeline.decode_images (the evaluator's decoder and normalisation); the
checkpoint's FrozenNet runs them in torch, the exported file in onnxruntime on the CPU at batch 1 and at
a larger batch (so a batch-dependent graph, e.g. BatchNorm left in training mode, shows); every
embedding is compared with torch's: the worst cosine similarity and the largest absolute difference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

import pipeline

MIN_COSINE = 0.9999  # below this the export fails
LARGE_BATCH = 32


@dataclass(frozen=True)
class Parity:
    images: int
    batch_sizes: tuple[int, ...]
    worst_cosine: float
    max_abs_diff: float
    max_abs_embedding: float  # the scale the difference is measured against

    @property
    def passed(self) -> bool:
        return self.worst_cosine >= MIN_COSINE

    def text(self) -> str:
        return (f"worst cosine {self.worst_cosine:.7f}, max |diff| {self.max_abs_diff:.3g} (embeddings up to "
                f"{self.max_abs_embedding:.3g}) on {self.images} faces at batch sizes "
                f"{', '.join(map(str, self.batch_sizes))}")

    def as_dict(self) -> dict:
        return {"images": self.images, "batch_sizes": list(self.batch_sizes), "worst_cosine": self.worst_cosine,
                "max_abs_diff": self.max_abs_diff, "max_abs_embedding": self.max_abs_embedding,
                "min_cosine": MIN_COSINE, "passed": self.passed}


def decode(encoded: Sequence[bytes]) -> torch.Tensor:
    """float32 [N,3,112,112] RGB in [-1,1] on the CPU: what the evaluator feeds a backbone."""
    return pipeline.decode_images(list(encoded), size=112, device="cpu")


def _run(fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([fn(images[s:s + batch]) for s in range(0, len(images), batch)])


def compare(reference: np.ndarray, others: Sequence[np.ndarray], batch_sizes: Sequence[int]) -> Parity:
    """Worst cosine and largest |difference| of every row of `others` against `reference` [N,D]."""
    ref = reference.astype(np.float64)
    cos, diff = 1.0, 0.0
    for other in others:
        o = other.astype(np.float64)
        if o.shape != ref.shape:
            raise ValueError(f"parity: expected embeddings {ref.shape}, found {o.shape}")
        c = (ref * o).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(o, axis=1), 1e-30)
        cos, diff = min(cos, float(c.min())), max(diff, float(np.abs(ref - o).max()))
    return Parity(len(ref), tuple(batch_sizes), cos, diff, float(np.abs(ref).max()))


def torch_embeddings(net: torch.nn.Module, images: torch.Tensor, batch: int = LARGE_BATCH) -> np.ndarray:
    with torch.inference_mode():
        return _run(lambda x: net(torch.from_numpy(x)).float().numpy(), images.numpy(), batch)


def onnx_parity(reference: np.ndarray, session, images: torch.Tensor) -> Parity:
    """`session` (onnxruntime) on `images`, at batch 1 and LARGE_BATCH, against `reference`, the torch
    embeddings of the same images (torch_embeddings)."""
    name = session.get_inputs()[0].name
    x = images.numpy()
    batches = (1, min(LARGE_BATCH, len(x))) if len(x) > 1 else (1,)
    runs = [_run(lambda b: session.run(None, {name: b})[0], x, batch) for batch in batches]
    return compare(reference, runs, batches)
