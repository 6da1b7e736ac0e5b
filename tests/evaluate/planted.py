"""The planted case of the audit: two .rec sets that share identities under other labels, and images
given a wrong label, as identity patterns (test_overlap.photo) that PoolNet separates."""
from pathlib import Path

import numpy as np

from convert.recordio import IRHeader, RecordWriter, pack
from tests.evaluate.test_overlap import photo


def write_planted(folder: Path, identities, per_identity: int, *, wrong: float, seed: int) -> dict:
    """An im2rec .rec of `identities` (label = position in the list, so a shared identity has another
    label in each set); a fraction `wrong` of the images, drawn with `seed`, shows another identity of the
    set. Returns {record key: true label} of the wrongly labelled images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = len(identities) * per_identity
    wrong_keys = set(rng.choice(n, int(round(wrong * n)), replace=False).tolist())
    planted, key = {}, 0
    with RecordWriter(folder / "train.rec", folder / "train.idx") as w:
        for label, identity in enumerate(identities):
            for _ in range(per_identity):
                shown = identity
                if key in wrong_keys:
                    other = (label + 1 + int(rng.integers(len(identities) - 1))) % len(identities)
                    shown, planted[key] = identities[other], other
                w.write_idx(key, pack(IRHeader(0, float(label), key, 0), photo(rng, shown)))
                key += 1
    return planted
