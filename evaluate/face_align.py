"""Align IJB loose crops to the 112x112 ArcFace template from five landmarks.

insightface's eval_ijbc.py estimates a similarity transform (skimage's SimilarityTransform, i.e.
Umeyama's least squares without reflection) from the five points to the template below and warps
with cv2.warpAffine (bilinear, black border). We estimate the same transform in numpy and warp with
Pillow's affine transform (bilinear, black fill); the two resamplers can differ in the last grey level.
The loose crops are whole JPEGs of varying size, which `pipeline.decode_images` (square output only)
cannot return unresized, so Pillow decodes them here.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

# insightface's ArcFace template for 112x112 (the 96x112 template shifted by 8 px in x).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def similarity_transform(src: np.ndarray, dst: np.ndarray = ARCFACE_TEMPLATE) -> np.ndarray:
    """2x3 matrix M of the similarity (rotation, uniform scale, shift) that best maps src onto dst.

    Umeyama (1991), "Least-squares estimation of transformation parameters between two point
    patterns", eq. 40-42, with the reflection excluded as skimage does.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.shape[1] != 2:
        raise ValueError(f"landmarks must be [K, 2] like the template {dst.shape}, found {src.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / src.shape[0]
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1
    u, sig, vt = np.linalg.svd(cov)
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / s0.var(0).sum()
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align(image: Image.Image, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """uint8 [size, size, 3] RGB face aligned by `landmarks` [5, 2] (x, y in image pixels)."""
    m = similarity_transform(landmarks)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]  # Pillow maps output pixels back to input
    out = image.convert("RGB").transform((size, size), Image.Transform.AFFINE, data=tuple(inv.ravel()),
                                         resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    return np.asarray(out, dtype=np.uint8)


def _load_aligned(path: Path, landmarks: np.ndarray) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return align(im, landmarks)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read or align this loose crop: {err}") from err


def aligned_batches(root: Path, names: Sequence[str], landmarks: np.ndarray, *, batch_size: int,
                    device: torch.device, workers: int = 8) -> Iterator[torch.Tensor]:
    """Normalised [b,3,112,112] batches of aligned crops, (x - 127.5) / 127.5 as training sees them."""
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow releases the GIL while decoding
        for s in range(0, len(names), batch_size):
            faces = list(pool.map(_load_aligned, [root / n for n in names[s:s + batch_size]],
                                  landmarks[s:s + batch_size]))
            x = torch.from_numpy(np.stack(faces)).to(device).permute(0, 3, 1, 2).float()
            yield (x - 127.5) / 127.5
