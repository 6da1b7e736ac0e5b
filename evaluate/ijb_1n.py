"""IJB-B / IJB-C 1:N identification: mixed probe templates against each gallery apart.

Template features are built as for 1:1 with Norm:True and Det:True (insightface's
`_evaluation_/ijb/ijb_1n.py` setting). Unlike that script, which searches G1 and G2 merged, each
gallery is searched on its own, as the IJB-C protocol defines it: probes whose subject is in the
other gallery are the non-mated searches. Rank-k and TPIR at FPIR follow `evaluate.ranking`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from evaluate.ijb import template_features
from evaluate.ranking import identification

RANKS = (1, 5, 10)
FPIRS = (1e-2, 1e-1)


def _rows(unique: np.ndarray, wanted: np.ndarray, what: str) -> np.ndarray:
    rows = np.minimum(np.searchsorted(unique, wanted), unique.size - 1)
    bad = unique[rows] != wanted
    if bad.any():
        raise ValueError(f"{what}: template {int(wanted[np.flatnonzero(bad)[0]])} has no images in the media list "
                         f"({int(bad.sum())} such templates)")
    return rows


def identify(features, faceness, templates, medias, galleries: Sequence, probes, *, norm: bool = True,
             det: bool = True, ranks: Sequence[int] = RANKS, fpirs: Sequence[float] = FPIRS) -> dict:
    """{gallery name: {"rank-1": f, ..., "tpir@fpir=0.01": f, ..., "mated", "nonmated"}} (fractions).

    galleries, probes: objects with `name`, `templates` and `subjects` arrays (evaluate.ijb_data.Gallery).
    """
    unique, feats = template_features(features, faceness, templates, medias, norm=norm, det=det)
    probe_feats = feats[_rows(unique, probes.templates, probes.name)]
    out = {}
    for g in galleries:
        gallery_feats = feats[_rows(unique, g.templates, g.name)]
        r = identification(probe_feats, probes.subjects, gallery_feats, g.subjects, ranks=ranks, fpirs=fpirs)
        out[g.name] = ({f"rank-{k}": v for k, v in r["rank"].items()}
                       | {f"tpir@fpir={f:g}": v for f, v in r["tpir"].items()}
                       | {"mated": r["mated"], "nonmated": r["nonmated"]})
    return out
