"""Operating thresholds of a pair set: the cosine threshold at each false-accept rate, and the TAR there.

The score is the cosine similarity of the two fused embeddings of a pair, fused = e(x) + e(flip(x)),
each L2-normalised (float64, as `verification.test` normalises them): cos = 1 - d^2 / 2, where d^2 is the
squared L2 distance insightface's accuracy thresholds (0..4). A pair is accepted when cos >= threshold.

The threshold at FAR f is sklearn's `roc_curve` point (every point, drop_intermediate=False) with the
largest false-accept rate not above f: the lowest threshold that accepts at most f of the impostor pairs.
With n impostor pairs the smallest FAR that pairs can measure is 1/n; below it the only threshold is one
above every impostor score, which says nothing about the model, so a FAR f with f * n < 1 is reported as
"too few impostor pairs" instead of a value.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from sklearn.metrics import roc_curve

SCORE = ("cosine similarity of the L2-normalised fused embeddings e(x) + e(flip(x)) (= 1 - d^2/2, d the L2 "
         "distance of insightface's accuracy); a pair is accepted when its cosine >= threshold")
LARGEST_FAR = 1e-1
# A FAR f is measurable when f * n >= 1: f = 1e-3 with exactly 1,000 impostor pairs must not fail on
# the float product 0.999999...
_SUPPORT_EPS = 1e-9


def decades(impostors: int, smallest: Optional[float] = None) -> tuple[float, ...]:
    """1e-1, 1e-2, ... down to the first decade the impostor pairs cannot measure (included, so that the
    report says where the set stops), or to `smallest`."""
    out, k = [], 1
    while True:
        far = float(f"1e-{k}")
        out.append(far)
        if not supported(far, impostors) or (smallest is not None and far <= smallest) or k >= 12:
            return tuple(out)
        k += 1


def supported(far: float, impostors: int) -> bool:
    return far * impostors >= 1 - _SUPPORT_EPS


def too_few(far: float, impostors: int) -> str:
    return f"too few impostor pairs for FAR {far:g} ({impostors} pairs)"


def scores(fused_normalised: np.ndarray) -> np.ndarray:
    """[P] cosine of each pair (rows 2i and 2i+1) of L2-normalised embeddings [2P, D]."""
    emb = np.asarray(fused_normalised, dtype=np.float64)
    return np.sum(emb[0::2] * emb[1::2], axis=1)


def operating_points(cosines: np.ndarray, issame: np.ndarray, fars: Optional[Sequence[float]] = None) -> dict:
    """{"score", "genuine_pairs", "impostor_pairs", "far": {f: {"threshold", "tar", "far"} or a message}}.

    `far` holds, for each asked FAR f (default: `decades`), the threshold, the TAR (fraction of genuine pairs
    accepted) and the FAR actually reached there (<= f), or the string `too_few(f, n)`.
    """
    cos = np.asarray(cosines, dtype=np.float64)
    labels = np.asarray(issame, dtype=bool)
    if cos.shape != labels.shape or cos.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of one length, found {cos.shape} and {labels.shape}")
    genuine, impostors = int(labels.sum()), int((~labels).sum())
    if genuine == 0 or impostors == 0:
        raise ValueError(f"thresholds need genuine and impostor pairs; found {genuine} genuine and {impostors} "
                         f"impostor pairs")
    if not np.isfinite(cos).all():
        raise ValueError(f"{int((~np.isfinite(cos)).sum())} pair scores are not finite")
    fpr, tpr, thr = roc_curve(labels, cos, drop_intermediate=False)
    out = {}
    for far in (decades(impostors) if fars is None else fars):
        if not supported(far, impostors):
            out[far] = too_few(far, impostors)
            continue
        i = int(np.searchsorted(fpr, far * (1 + _SUPPORT_EPS), side="right")) - 1  # fpr is non-decreasing
        out[far] = {"threshold": float(thr[i]), "tar": float(tpr[i]), "far": float(fpr[i])}
    return {"score": SCORE, "genuine_pairs": genuine, "impostor_pairs": impostors, "far": out}


def roc(cosines: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(far, tar) of every ROC point, for a plot."""
    fpr, tpr, _ = roc_curve(np.asarray(issame, dtype=bool), np.asarray(cosines, dtype=np.float64),
                            drop_intermediate=False)
    return fpr, tpr
