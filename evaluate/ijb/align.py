"""Align IJB loose crops to the 112x112 ArcFace template from five landmarks, as insightface does.

insightface's `eval_ijbc.py` (arcface_torch): the image is read with `cv2.imread` (BGR), the landmarks
are float32, `skimage.transform.SimilarityTransform` is estimated from the five points to the template
(Umeyama's least squares without reflection), and `cv2.warpAffine` warps (bilinear, black border) before
the BGR -> RGB conversion. We make the same calls with the same arguments, so IJB numbers compare with
published ones: Pillow's affine samples half a pixel away (its pixel-centre convention differs), about
12 grey levels on a test pattern.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from skimage import transform

from common.safe_pickle import DataFileError

# insightface's template: the 96x112 one in float32, shifted by 8 px in x for 112x112 (`src[:, 0] += 8.0`).
ARCFACE_TEMPLATE = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                             [33.5493, 92.3655], [62.7299, 92.2041]], dtype=np.float32)
ARCFACE_TEMPLATE[:, 0] += 8.0


def similarity_transform(landmarks: np.ndarray, template: np.ndarray = ARCFACE_TEMPLATE) -> np.ndarray:
    """2x3 matrix M of the similarity (rotation, uniform scale, shift) that best maps `landmarks` [5, 2]
    onto the template: skimage's estimate, as insightface calls it."""
    landmarks = np.asarray(landmarks, dtype=np.float32)
    if landmarks.shape != template.shape:
        raise ValueError(f"landmarks must be [5, 2] like the template {template.shape}, found {landmarks.shape}")
    if hasattr(transform.SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = transform.SimilarityTransform.from_estimate(landmarks, template)
        if not tform:
            raise ValueError(f"landmarks {landmarks.tolist()}: no similarity transform fits them")
    else:
        tform = transform.SimilarityTransform()
        if not tform.estimate(landmarks, template):
            raise ValueError(f"landmarks {landmarks.tolist()}: no similarity transform fits them")
    return tform.params[0:2, :]


def align(image_bgr: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """uint8 [size, size, 3] RGB face from a BGR image (as cv2.imread returns it) and its `landmarks`
    [5, 2] (x, y in image pixels)."""
    warped = cv2.warpAffine(image_bgr, similarity_transform(landmarks), (size, size), borderValue=0.0)
    return cv2.cvtColor(warped, cv2.COLOR_BGR2RGB)


def _load_aligned(path: Path, landmarks: np.ndarray) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # BGR, as insightface reads it
    if image is None:
        raise DataFileError(f"{path}: cannot read this loose crop (missing, or not an image OpenCV decodes)")
    try:
        return align(image, landmarks)
    except (ValueError, cv2.error) as err:
        why = " ".join(str(err).split())  # cv2.error spreads its message over several lines
        raise DataFileError(f"{path}: cannot align this loose crop: {why}") from err


def aligned_batches(root: Path, names: Sequence[str], landmarks: np.ndarray, *, batch_size: int,
                    device: torch.device, workers: int = 8) -> Iterator[torch.Tensor]:
    """Normalised [b,3,112,112] batches of aligned crops, (x - 127.5) / 127.5 as training sees them."""
    with ThreadPoolExecutor(max_workers=workers) as pool:  # OpenCV releases the GIL while decoding and warping
        for s in range(0, len(names), batch_size):
            faces = list(pool.map(_load_aligned, [root / n for n in names[s:s + batch_size]],
                                  landmarks[s:s + batch_size]))
            x = torch.from_numpy(np.stack(faces)).to(device).permute(0, 3, 1, 2).float()
            yield (x - 127.5) / 127.5
