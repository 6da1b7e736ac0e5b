"""The data audit: one person under two labels, mislabelled images and duplicates, in one or more shard sets.

`python -m evaluate audit SHARDS [SHARDS ...] --checkpoint M --output DIR` (evaluate/cli.py) embeds up to
K images of every class (overlap.key_embeddings: the evaluator's fused, flipped pass, images decoded as
training sees them), and finds:

- conflicts: pairs of classes, in one set or across sets, whose centres (the normalised mean of their
  images' unit embeddings) have cosine similarity above the conflict threshold;
- outliers: images whose similarity to their own class's centre, computed without them (leave one out:
  a mislabelled image would otherwise pull the centre of a small class its way), is below the outlier
  threshold;
- duplicates: identical stored bytes under two keys (sha256 of every sample, not only the K embedded),
  and embeddings of two classes' images with cosine >= NEAR_DUPLICATE.

The conflict threshold defaults to the impostor rule (evaluate/impostor_threshold.py): the similarity
that pairs of images of different classes exceed at FAR 1e-5, two classes as close as a stranger gets
once in 1/FAR tries. The outlier threshold defaults to the stranger rule (same module): the similarity to
a class's centre that images of other classes exceed at the stranger acceptance rate 1e-2, so that an
outlier is as far from its class as all but 1% of strangers, and about 1% of mislabels (strangers
under the label) are missed. Since the data's own labels are what is in doubt, both rules are measured
again without the images and classes flagged until the flagged sets stop changing (at most ROUNDS
times), and the class centres too are computed again without the outliers for the conflicts (a class left
without images keeps the centre of them all).
--conflict-threshold and --outlier-threshold replace the rules' values.

The class-by-class search is evaluate.similarity_search.close_pairs: blocks, memory bounded in the
number of classes, on the GPU where there is one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from evaluate import impostor_threshold
from evaluate.overlap import class_keys, key_embeddings, unit
from evaluate.similarity_search import close_pairs

NEAR_DUPLICATE = 0.98  # cosine of two images' fused embeddings: the same photo, re-encoded or resized
ROUNDS = 10


@dataclass(frozen=True)
class Embedded:
    """The embedded images of all the sets, laid end to end: row r is set `dataset[r]`'s key `key[r]`."""

    emb: np.ndarray  # float32 [M, D], unit rows
    cls: np.ndarray  # int64 [M], the class over all sets (set d's class c is offsets[d] + c)
    dataset: np.ndarray  # int64 [M]
    key: np.ndarray  # int64 [M], the sample's key in its own set
    class_offsets: tuple  # first class of each set, and the total at the end

    def __post_init__(self):
        m = self.emb.shape[0]
        if not self.cls.shape == self.dataset.shape == self.key.shape == (m,):
            raise ValueError(f"embedded: {m} embeddings with {self.cls.shape}, {self.dataset.shape}, {self.key.shape}")

    @property
    def num_classes(self) -> int:
        return self.class_offsets[-1]

    def dataset_of_class(self, c: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.asarray(self.class_offsets), c, side="right") - 1


def embed_sets(model: torch.nn.Module, sets: Sequence, *, per_class: Optional[int], device=None,
               batch_size: int = 256, progress: bool = True) -> Embedded:
    """sets: pipeline.ShardSamples each; per_class: images embedded per class, the first by key (None: all)."""
    embs, cls, ds, keys, offsets = [], [], [], [], [0]
    for d, samples in enumerate(sets):
        labels = samples.labels(np.arange(samples.num_samples))
        k = np.arange(samples.num_samples) if per_class is None else class_keys(labels, per_class)
        parts = [e for _, e in key_embeddings(model, samples, k, device=device, batch_size=batch_size,
                                              progress=progress, desc=f"audit: set {d + 1} of {len(sets)}")]
        embs.append(np.concatenate(parts))
        cls.append(labels[k].astype(np.int64) + offsets[-1])
        ds.append(np.full(k.size, d, np.int64))
        keys.append(k.astype(np.int64))
        offsets.append(offsets[-1] + samples.num_classes)
    return Embedded(np.concatenate(embs), np.concatenate(cls), np.concatenate(ds), np.concatenate(keys),
                    tuple(offsets))


def class_sums(e: Embedded, keep: np.ndarray) -> np.ndarray:
    """float64 [C, D]: the sum of each class's kept unit embeddings."""
    sums = torch.zeros(e.num_classes, e.emb.shape[1], dtype=torch.float64)
    sums.index_add_(0, torch.from_numpy(e.cls[keep]), torch.from_numpy(e.emb[keep]).double())
    return sums.numpy()


def own_class_similarity(e: Embedded, sums: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """float64 [M]: each image's cosine with its class's centre without it (NaN for a class of one image).
    counted: bool [M], whether the image is in `sums` (then it is taken out)."""
    rest = sums[e.cls] - np.where(counted[:, None], e.emb.astype(np.float64), 0.0)
    norm = np.linalg.norm(rest, axis=1)
    dot = np.einsum("ij,ij->i", rest, e.emb.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 1e-9, dot / norm, np.nan)


@dataclass(frozen=True)
class Findings:
    conflict_threshold: dict  # ImpostorThreshold.to_dict(), or {"value", "how"} when given
    outlier_threshold: dict
    rounds: int
    conflicts: tuple  # of (class a, class b, similarity), a < b, most similar first
    outliers: tuple  # of (row of Embedded, own-class similarity, nearest other class, its similarity), lowest first
    near_duplicates: tuple  # of (row a, row b, similarity), rows of different classes
    warnings: tuple = ()  # of str: what makes the findings doubtful


def _given(value: float, flag: str) -> dict:
    return {"value": float(value), "how": f"given by {flag}: {float(value):.4f}"}


def _centres_without(e: Embedded, outlier: np.ndarray, all_sums: np.ndarray) -> np.ndarray:
    """[C, D] unit class centres of the images that are not outliers."""
    sums = class_sums(e, ~outlier)
    # a class whose images are all outliers keeps the centre of them all, rather than no centre and no
    # conflict: before the stranger rule, a shared identity (bench/planted_audit.py's a55 = b5) was lost so
    left = np.bincount(e.cls[~outlier], minlength=e.num_classes) == 0
    sums[left] = all_sums[left]
    return unit(sums)


def _ranked_outliers(e: Embedded, outlier: np.ndarray, own: np.ndarray, centres: np.ndarray) -> tuple:
    """Each outlier as (image, similarity to its own class, nearest other class, similarity to it), the
    least like its own class first."""
    rows = np.flatnonzero(outlier)
    sims = e.emb[rows] @ centres.T  # [outliers, C]: which class each outlier looks like
    sims[np.arange(rows.size), e.cls[rows]] = -np.inf
    nearest = sims.argmax(axis=1) if rows.size else np.zeros(0, np.int64)
    order = np.argsort(own[rows], kind="stable")
    return tuple((int(rows[o]), float(own[rows[o]]), int(nearest[o]), float(sims[o, nearest[o]])) for o in order)


def find(e: Embedded, *, conflict_threshold: Optional[float] = None, outlier_threshold: Optional[float] = None,
         far: float = impostor_threshold.TARGET_FAR, stranger_rate: float = impostor_threshold.STRANGER_RATE,
         device="cpu", progress: bool = True) -> Findings:
    """Conflicts, outliers and near-duplicate embeddings (module docstring), the thresholds and the rounds."""
    flagged_images = np.zeros(e.emb.shape[0], bool)
    flagged_classes = np.zeros(0, np.int64)
    warnings = []
    everything = np.ones(e.emb.shape[0], bool)
    all_sums = class_sums(e, everything)
    own = own_class_similarity(e, all_sums, everything)  # outliers are scored against the centres of all images
    for rounds in range(1, ROUNDS + 1):
        measured = False  # a rule measured this round: another round may change it
        if conflict_threshold is None or outlier_threshold is None:
            keep = ~flagged_images & ~np.isin(e.cls, flagged_classes)
            if rounds > 1 and np.unique(e.cls[keep]).size < 2:  # the previous round's findings stand
                warnings.append(f"round {rounds}: the images and classes flagged leave {np.unique(e.cls[keep]).size} "
                                f"class(es) to measure strangers on: the model does not separate these identities, "
                                f"the findings of round {rounds - 1} (thresholds {t_conf['value']:.4f}, "
                                f"{t_out['value']:.4f}) are kept")
                rounds -= 1
                break
            measured = True
        t_conf = _given(conflict_threshold, "--conflict-threshold") if conflict_threshold is not None else \
            impostor_threshold.image_threshold(e.emb, e.cls, far=far, keep=keep).to_dict()
        # a stranger's score mirrors `own`: against the centre of all of a class's images but one
        t_out = _given(outlier_threshold, "--outlier-threshold") if outlier_threshold is not None else \
            impostor_threshold.stranger_threshold(e.emb, e.cls, all_sums, rate=stranger_rate, keep=keep).to_dict()
        outlier = own < t_out["value"]  # NaN (a class of one image) compares False
        centres = _centres_without(e, outlier, all_sums)
        pairs = close_pairs(centres, t_conf["value"], device=device, progress=progress, desc="audit: class pairs")
        new_classes = np.unique(np.concatenate([pairs.i, pairs.j]))
        if not measured or (np.array_equal(outlier, flagged_images) and np.array_equal(new_classes, flagged_classes)):
            break
        flagged_images, flagged_classes = outlier, new_classes
    outliers = _ranked_outliers(e, outlier, own, centres)
    near = close_pairs(e.emb, NEAR_DUPLICATE, groups=e.cls, device=device, progress=progress,
                       desc="audit: near-duplicates")
    return Findings(t_conf, t_out, rounds,
                    tuple(zip(pairs.i.tolist(), pairs.j.tolist(), pairs.similarity.astype(float).tolist())),
                    outliers,
                    tuple(zip(near.i.tolist(), near.j.tolist(), near.similarity.astype(float).tolist())),
                    tuple(warnings))


def identical_bytes(samples, *, chunk: int = 65536) -> list:
    """Groups (lists of keys, ascending) of samples of one set whose stored image bytes are identical."""
    seen: dict = {}
    for s in range(0, samples.num_samples, chunk):
        keys = np.arange(s, min(s + chunk, samples.num_samples))
        for k, data in zip(keys.tolist(), samples.encoded(keys)):
            seen.setdefault(hashlib.sha256(memoryview(data)).digest(), []).append(k)
    return sorted(group for group in seen.values() if len(group) > 1)


def conflict_groups(conflicts: Sequence[tuple]) -> list:
    """Connected classes (lists, ascending) of the conflict pairs: one person under each group's labels."""
    if not conflicts:
        return []
    ends = np.array([(a, b) for a, b, _ in conflicts], dtype=np.int64)
    classes, node = np.unique(ends, return_inverse=True)
    node = node.reshape(ends.shape)
    links = coo_matrix((np.ones(len(ends)), (node[:, 0], node[:, 1])), shape=(classes.size, classes.size))
    _, group = connected_components(links, directed=False)
    groups: dict = {}
    for c, g in zip(classes.tolist(), group.tolist()):
        groups.setdefault(g, []).append(c)
    return sorted(groups.values())
