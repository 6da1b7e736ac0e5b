"""Closed- and open-set identification over probe x gallery similarity scores.

Follows the DIR_FAR routine (Yichun Shi's metrics.py) that CVLFace uses for TinyFace:
- a probe is mated when the gallery holds at least one entry of its label; rank-k (CMC) is the
  fraction of mated probes with a mate among the k best-scoring gallery entries;
- TPIR at FPIR f: the threshold is the round(f * n)-th highest of the n non-mated probes' best
  scores (just above the highest when that count is 0), and a mated probe counts when its mate
  is at rank 1 and scores at least the threshold.
A probe's rank is 1 + the number of non-mate gallery entries scoring strictly higher than its best
mate (DIR_FAR sorts with argsort, which leaves ties in an arbitrary order). Scores are dot products
in float32, computed for `chunk` probes at a time so that the score matrix never exists whole.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def as_float32(x) -> np.ndarray:
    """A numpy or torch array as a C-contiguous float32 numpy array (torch tensors leave their device)."""
    return np.ascontiguousarray(np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float32))


def mate_scores_and_ranks(probe_feats, probe_labels, gallery_feats, gallery_labels, *, chunk: int = 256):
    """Per probe: best mate score (nan when unmated), rank of that mate, best overall score."""
    p = as_float32(probe_feats)
    g = as_float32(gallery_feats)
    pl = np.asarray(probe_labels)
    gl = np.asarray(gallery_labels)
    if p.ndim != 2 or g.ndim != 2 or p.shape[1] != g.shape[1]:
        raise ValueError(f"probe and gallery features must be [P, D] and [G, D], found {p.shape} and {g.shape}")
    if pl.shape != (p.shape[0],) or gl.shape != (g.shape[0],):
        raise ValueError(f"labels must be [P] and [G]: found {pl.shape} for {p.shape[0]} probes and "
                         f"{gl.shape} for {g.shape[0]} gallery entries")
    best_mate = np.full(p.shape[0], np.nan, dtype=np.float32)
    rank = np.zeros(p.shape[0], dtype=np.int64)
    best_any = np.zeros(p.shape[0], dtype=np.float32)
    for s in range(0, p.shape[0], chunk):
        scores = p[s:s + chunk] @ g.T  # [c, G]
        mates = pl[s:s + chunk, None] == gl[None, :]
        mate_best = np.where(mates, scores, -np.inf).max(axis=1)
        higher = ((scores > mate_best[:, None]) & ~mates).sum(axis=1)
        has = mates.any(axis=1)
        best_mate[s:s + chunk] = np.where(has, mate_best, np.nan)
        rank[s:s + chunk] = np.where(has, higher + 1, 0)
        best_any[s:s + chunk] = scores.max(axis=1)
    return best_mate, rank, best_any


def identification(probe_feats, probe_labels, gallery_feats, gallery_labels, *,
                   ranks: Sequence[int] = (1, 5, 10), fpirs: Sequence[float] = (), chunk: int = 256) -> dict:
    """{"rank": {k: fraction}, "tpir": {fpir: fraction}, "mated": n, "nonmated": n}."""
    best_mate, rank, best_any = mate_scores_and_ranks(probe_feats, probe_labels, gallery_feats,
                                                      gallery_labels, chunk=chunk)
    mated = rank > 0
    if not mated.any():
        raise ValueError(f"none of the {rank.size} probes has a mate in the gallery; rank-k is undefined")
    out = {"rank": {int(k): float(np.mean(rank[mated] <= k)) for k in ranks},
           "mated": int(mated.sum()), "nonmated": int((~mated).sum())}
    if fpirs:
        neg = np.sort(best_any[~mated])[::-1]
        if neg.size == 0:
            raise ValueError("TPIR at FPIR needs non-mated probes (probes with no mate in the gallery); found none")
        out["tpir"] = {}
        for f in fpirs:
            k = int(np.round(neg.size * f))
            threshold = neg[0] + 1e-5 if k == 0 else neg[k - 1]
            out["tpir"][float(f)] = float(np.mean((rank[mated] == 1) & (best_mate[mated] >= threshold)))
    return out
