"""IJB-B / IJB-C metrics from image features: template features, then 1:1 TAR at FAR and 1:N search.

1:1 protocol (insightface `recognition/arcface_torch/eval_ijbc.py`; CVLFace's `ijbbc/evaluate.py` is
the same code run for three configurations):
- image feature = e(x) + e(flip(x));
- Norm:False L2-normalises each image feature first (Norm:True keeps the raw norm as a quality
  weight); Det:True multiplies it by the detector's faceness score;
- media feature = mean of the template's images from one media (video frames share a media id);
- template feature = sum of its media features, then L2-normalised;
- score of a pair = dot product of its two template features;
- TAR at FAR f = TPR of the ROC point (sklearn's roc_curve, default drop_intermediate) whose FPR is
  nearest to f, the later (higher-TPR) point winning a tie, as insightface picks it.
Ours is vectorised (grouped sums instead of a loop per template, block matrix products for the
pairs) and holds media and template sums and scores in float64 (insightface: float32 media means,
float64 template sums); the scores agree with its loop to about 1e-7.

1:N: template features are built as for 1:1 with Norm:True and Det:True (insightface's
`_evaluation_/ijb/ijb_1n.py` setting). Unlike that script, which searches G1 and G2 merged, each
gallery is searched on its own, as the IJB-C protocol defines it: probes whose subject is in the
other gallery are the non-mated searches. Rank-k and TPIR at FPIR follow `evaluate.ranking`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_curve

from evaluate.ranking import as_float32, identification

DEFAULT_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
# CVLFace's three configurations, in its order; the headline number is HEADLINE at FAR 1e-4.
CONFIGS = ((True, True), (True, False), (False, True))
HEADLINE = "Norm:False_Det:True"
HEADLINE_FAR = 1e-4
_CHUNK = 1 << 15  # images per index_add_ call
# 1:N: ranks and FPIRs reported for each gallery
RANKS = (1, 5, 10)
FPIRS = (1e-2, 1e-1)


def config_name(norm: bool, det: bool) -> str:
    return f"Norm:{norm}_Det:{det}"


def template_features(features, faceness, templates, medias, *, norm: bool = True, det: bool = True):
    """Aggregate image features into L2-normalised template features.

    features: [N, D] (e + e_flip per image); faceness, templates, medias: [N].
    Returns (unique_templates [T] sorted, template_feats [T, D] float64 with unit rows).
    """
    x = as_float32(features)
    templates = np.asarray(templates).astype(np.int64, copy=False)
    medias = np.asarray(medias).astype(np.int64, copy=False)
    n = x.shape[0]
    if x.ndim != 2 or templates.shape != (n,) or medias.shape != (n,):
        raise ValueError(f"features must be [N, D] with templates and medias [N]; found features "
                         f"{x.shape}, templates {templates.shape}, medias {medias.shape}")
    if n == 0:
        raise ValueError("template_features: no images")
    if not norm:
        x = x / np.sqrt(np.sum(x ** 2, -1, keepdims=True))
    if det:
        faceness = np.asarray(faceness, dtype=np.float32)
        if faceness.shape != (n,):
            raise ValueError(f"faceness must be [N]={n}, found {faceness.shape}")
        x = x * faceness[:, None]

    # Group images by (template, media) and sum each group with index_add_ (one pass, no loop per
    # template as insightface's np.where loops); chunks keep the float64 copy of x small.
    unique_t, t_idx = np.unique(templates, return_inverse=True)
    key = t_idx.astype(np.int64) * (int(medias.max()) - int(medias.min()) + 1) + (medias - medias.min())
    _, group, group_count = np.unique(key, return_inverse=True, return_counts=True)
    group_t = torch.from_numpy(group.astype(np.int64))
    media_sum = torch.zeros(group_count.size, x.shape[1], dtype=torch.float64)
    xt = torch.from_numpy(x)
    for s in range(0, n, _CHUNK):
        media_sum.index_add_(0, group_t[s:s + _CHUNK], xt[s:s + _CHUNK].double())
    media_mean = media_sum / torch.from_numpy(group_count).double()[:, None]
    # the template of each media group: any member's template (all members share it)
    group_template = np.empty(group_count.size, dtype=np.int64)
    group_template[group] = t_idx
    template_sum = torch.zeros(unique_t.size, x.shape[1], dtype=torch.float64)
    template_sum.index_add_(0, torch.from_numpy(group_template), media_mean)
    norms = template_sum.norm(dim=1, keepdim=True)
    template_sum /= norms.clamp_min(np.finfo(np.float64).tiny)  # sklearn's normalize leaves 0 rows at 0
    return unique_t, template_sum.numpy()


def _template_rows(unique_templates: np.ndarray, ids: np.ndarray, which: str, unit: str) -> np.ndarray:
    """Row of each template id in the sorted `unique_templates`; an id without images is an error
    naming `which` (the protocol column or file) and counting the `unit`s (pairs, templates) affected."""
    rows = np.minimum(np.searchsorted(unique_templates, ids), unique_templates.size - 1)
    bad = unique_templates[rows] != ids
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{which}[{i}] names template {int(ids[i])}, which has no images "
                         f"({int(bad.sum())} such {unit})")
    return rows


def pair_scores(unique_templates, template_feats, p1, p2, *, device="cpu", block: int = 1024):
    """Dot product of the template features of each pair (float64).

    Pairs are grouped by their first template; for each block of `block` first templates one matrix
    product against the second templates that block needs gives all its scores. IJB-C has 15.7M
    pairs over 23k templates (3% of all template pairs), and a dense product runs far faster than
    gathering two 512-d rows per pair.
    """
    p1 = np.asarray(p1).astype(np.int64, copy=False)
    p2 = np.asarray(p2).astype(np.int64, copy=False)
    if p1.shape != p2.shape or p1.ndim != 1:
        raise ValueError(f"p1 and p2 must be 1-D of one length, found {p1.shape} and {p2.shape}")
    r1 = _template_rows(unique_templates, p1, "p1", "pairs")
    r2 = _template_rows(unique_templates, p2, "p2", "pairs")
    feats = torch.from_numpy(np.ascontiguousarray(template_feats, dtype=np.float64)).to(device)
    order = np.argsort(r1, kind="stable")
    r1s, r2s = r1[order], r2[order]
    edges = np.searchsorted(r1s, np.arange(0, len(unique_templates) + block, block))
    out = np.empty(p1.size, dtype=np.float64)
    for b in range(len(edges) - 1):
        lo, hi = edges[b], edges[b + 1]
        if lo == hi:
            continue
        first = b * block
        cols, col_of_pair = np.unique(r2s[lo:hi], return_inverse=True)
        gram = feats[first:first + block] @ feats[torch.from_numpy(cols).to(device)].T  # [block, cols]
        rows = torch.from_numpy(r1s[lo:hi] - first).to(device)
        out[order[lo:hi]] = gram[rows, torch.from_numpy(col_of_pair).to(device)].cpu().numpy()
    return out


def template_scores(features, faceness, templates, medias, p1, p2, norm: bool = True, det: bool = True,
                    *, device="cpu") -> np.ndarray:
    """One score per pair (p1[i], p2[i]) from per-image features, by insightface's aggregation."""
    unique, feats = template_features(features, faceness, templates, medias, norm=norm, det=det)
    return pair_scores(unique, feats, p1, p2, device=device)


def roc_at_far(scores, labels, fars: Sequence[float] = DEFAULT_FARS) -> dict:
    """{far: (tar, threshold)} at the ROC point insightface picks for each far."""
    labels = np.asarray(labels).astype(np.int64, copy=False)
    scores = np.asarray(scores)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of one length, found {scores.shape} and {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, found {np.unique(labels)[:5]}")
    if labels.min() == labels.max():
        raise ValueError(f"TAR at FAR needs both genuine and impostor pairs; all {labels.size} labels are {labels[0]}")
    fpr, tpr, thr = roc_curve(labels, scores)
    fpr, tpr, thr = fpr[::-1], tpr[::-1], thr[::-1]
    out = {}
    for far in fars:
        # np.argmin takes the first minimum, as insightface's min() over (distance, index) tuples.
        i = int(np.argmin(np.abs(fpr - far)))
        out[far] = (float(tpr[i]), float(thr[i]))
    return out


def tar_at_far(scores, labels, fars: Sequence[float] = DEFAULT_FARS) -> dict:
    """{far: tar} (fractions), picked as insightface's eval_ijbc.py picks them."""
    return {far: tar for far, (tar, _) in roc_at_far(scores, labels, fars).items()}


def verify_11(features, faceness, templates, medias, p1, p2, labels, *, configs: Iterable = CONFIGS,
              fars: Sequence[float] = DEFAULT_FARS, device="cpu") -> dict:
    """1:1, CVLFace's three configurations: {config name: {far: {"tar", "threshold"}}} plus the headline."""
    unique_t = None
    result = {}
    for norm, det in configs:
        unique_t, feats = template_features(features, faceness, templates, medias, norm=norm, det=det)
        scores = pair_scores(unique_t, feats, p1, p2, device=device)
        result[config_name(norm, det)] = {
            far: {"tar": tar, "threshold": t} for far, (tar, t) in roc_at_far(scores, labels, fars).items()}
    if HEADLINE in result and HEADLINE_FAR in result[HEADLINE]:
        result["headline"] = {"config": HEADLINE, "far": HEADLINE_FAR,
                              "tar": result[HEADLINE][HEADLINE_FAR]["tar"]}
    return result


def identify(features, faceness, templates, medias, galleries: Sequence, probes, *, norm: bool = True,
             det: bool = True, ranks: Sequence[int] = RANKS, fpirs: Sequence[float] = FPIRS) -> dict:
    """1:N: {gallery name: {"rank-1": f, ..., "tpir@fpir=0.01": f, ..., "mated", "nonmated"}} (fractions).

    galleries, probes: objects with `name`, `templates` and `subjects` arrays (evaluate.ijb.protocol.Gallery).
    """
    unique, feats = template_features(features, faceness, templates, medias, norm=norm, det=det)
    probe_feats = feats[_template_rows(unique, probes.templates, probes.name, "templates")]
    out = {}
    for g in galleries:
        gallery_feats = feats[_template_rows(unique, g.templates, g.name, "templates")]
        r = identification(probe_feats, probes.subjects, gallery_feats, g.subjects, ranks=ranks, fpirs=fpirs)
        out[g.name] = ({f"rank-{k}": v for k, v in r["rank"].items()}
                       | {f"tpir@fpir={f:g}": v for f, v in r["tpir"].items()}
                       | {"mated": r["mated"], "nonmated": r["nonmated"]})
    return out
