"""Train/test identity overlap: each training class's centre against every image of the verification sets.

MS1M shares identities with LFW, CFP and AgeDB; a verification score over people the backbone was trained
on is no longer a test on unseen identities. `python -m evaluate overlap` (evaluate/cli.py) flags them:

- A training class's centre: its first K keys (key order, so the same images every run) through the
  evaluator's image pass (evaluate.embed: the backbone with its flip, fused = e(x) + e(flip(x))), each
  fused embedding L2-normalised, their mean normalised again. Images are decoded as training sees them
  (pipeline.ShardSamples.image_batches).
- Every image of every verification set, through the same pass (decoded by pipeline.decode_batches at
  112 as `python -m evaluate` does), normalised.
- A (class, image) whose cosine similarity is above the threshold is a suspected overlap.

The default threshold, overridable by --threshold, is the impostor rule that `python -m evaluate audit`
uses (evaluate/impostor_threshold.py): the cosine similarity that pairs of training images of different
classes exceed at the false-accept rate --far (default 1e-5, or the smallest rate the pairs support). The
images are those averaged into the centres (up to RULE_IMAGES of them, drawn with a fixed seed), so the
threshold is in the model's own units on the data it is asked about: "a stranger scores above this once
in 1/FAR tries". The audit makes classes x images comparisons (85k MS1M classes x 12k LFW images is
1e9), so the report states how many strangers that rate lets through on average (FAR x comparisons):
flags of that order are what chance alone gives, far more are overlaps. The training labels are taken as
they are here (`evaluate audit` is the tool that doubts them).

Why not the sets' own pairs: a .bin holds a few thousand different-identity pairs (LFW: 3000), which
measure the impostor tail only down to about 1e-3; the rule this module had before, built on them, put
the demo's small teacher's threshold above 1 (nothing could be flagged). The sets' pairs still give
each set's statistics in the report, and a warning where the model does not separate identities there
(mean same-identity similarity not above the 99.9th percentile of different-identity similarity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from common.errors import InputError
import pipeline
from evaluate import impostor_threshold
from evaluate.embed import DECODE_BATCHES_PER_CALL, embed_batches, embed_encoded, pass_device
from evaluate.verification import VerificationSet

DEFAULT_PER_CLASS = 8
IMPOSTOR_QUANTILE = 0.999  # of a set's different-identity pairs: the warning's measure of separation
RULE_IMAGES = 65_536  # training images kept for the impostor rule: 128 MB at 512 dimensions, 2e9 pairs to draw from
RULE_SEED = 0
MATCH_CHUNK_ENTRIES = 2**26  # similarities computed at once: [images, classes] in float32, 256 MB
MAX_MATCHES = 1_000_000  # per set: more means a threshold inside the impostor distribution, not overlaps


class ThresholdError(InputError, ValueError):
    """A threshold so low that it flags more than MAX_MATCHES (class, image) pairs of a set."""


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); a zero row stays zero."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def class_keys(labels: np.ndarray, per_class: int) -> np.ndarray:
    """The first `per_class` keys of each class (in key order), all of them ascending: int64 [M]."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, found {per_class}")
    order = np.argsort(labels, kind="stable")  # grouped by class, keys ascending within each class
    grouped = labels[order]
    rank = np.arange(order.size) - np.searchsorted(grouped, grouped, side="left")
    return np.sort(order[rank < per_class]).astype(np.int64)


@dataclass(frozen=True)
class ClassCentres:
    centres: np.ndarray  # float32 [C, D], unit rows; a zero row for a class without samples
    images: np.ndarray  # int64 [C], the images averaged into each
    rule_emb: np.ndarray  # float32 [S, D], unit rows: up to RULE_IMAGES of those images, for the impostor rule
    rule_labels: np.ndarray  # int64 [S], their classes

    def __post_init__(self):
        if self.centres.ndim != 2 or self.images.shape != (self.centres.shape[0],):
            raise ValueError(f"centres must be [C, D] with images [C], found {self.centres.shape} and "
                             f"{self.images.shape}")
        if self.rule_emb.shape != (self.rule_labels.size, self.centres.shape[1]):
            raise ValueError(f"rule images must be [S, {self.centres.shape[1]}] with labels [S], found "
                             f"{self.rule_emb.shape} and {self.rule_labels.shape}")


def key_embeddings(model: torch.nn.Module, samples: "pipeline.ShardSamples", keys: np.ndarray, *, device=None,
                   batch_size: int = 256, progress: bool = True, desc: str = "overlap: training classes"):
    """Yield (keys chunk, float32 [n, D] unit fused embeddings) for `keys` of the shards, in order: images
    decoded as training sees them, `batch_size * DECODE_BATCHES_PER_CALL` at a time, embedded in batches."""
    dev = pass_device(model, device)
    step = batch_size * DECODE_BATCHES_PER_CALL
    bar = tqdm(total=keys.size, desc=desc, unit="img", disable=not progress)
    try:
        for s in range(0, keys.size, step):
            chunk = keys[s:s + step]
            emb = embed_batches(model, samples.image_batches(chunk, device=dev, batch_size=batch_size),
                                total=chunk.size)
            yield chunk, unit(emb.fused)
            bar.update(chunk.size)
    finally:
        bar.close()


def class_centres(model: torch.nn.Module, samples: "pipeline.ShardSamples", *, per_class: int = DEFAULT_PER_CLASS,
                  device=None, batch_size: int = 256, progress: bool = True,
                  rule_images: int = RULE_IMAGES) -> ClassCentres:
    """Each training class's centre: the normalised mean of its first `per_class` images' normalised fused
    embeddings (key_embeddings); and the embeddings of up to `rule_images` of those images (all of them, or
    that many drawn with RULE_SEED) for the impostor rule, kept as they pass."""
    labels = samples.labels(np.arange(samples.num_samples))
    keys = class_keys(labels, per_class)
    kept = keys if keys.size <= rule_images else \
        np.sort(np.random.default_rng(RULE_SEED).choice(keys, rule_images, replace=False))
    sums, rule = None, []
    count = np.bincount(labels[keys], minlength=samples.num_classes)
    for chunk, fused in key_embeddings(model, samples, keys, device=device, batch_size=batch_size,
                                       progress=progress):
        if sums is None:
            sums = torch.zeros(samples.num_classes, fused.shape[1], dtype=torch.float64)
        sums.index_add_(0, torch.from_numpy(labels[chunk]), torch.from_numpy(fused).double())
        rule.append(fused[np.isin(chunk, kept)])
    return ClassCentres(centres=unit(sums.numpy()), images=count.astype(np.int64),
                        rule_emb=np.concatenate(rule), rule_labels=labels[kept].astype(np.int64))


def set_embeddings(model: torch.nn.Module, vset: VerificationSet, *, device=None, batch_size: int = 256,
                   progress: bool = True) -> np.ndarray:
    """float32 [N, D]: each image of the set, fused with its flip and normalised (as `python -m evaluate`)."""
    emb = embed_encoded(model, vset.images, device=device, batch_size=batch_size,
                        desc=f"overlap: {vset.name}" if progress else None, source=vset.source or vset.name)
    return unit(emb.fused)


@dataclass(frozen=True)
class PairStats:
    """A set's own pairs, by cosine similarity of their normalised fused embeddings."""

    same: int
    different: int
    mean_same: Optional[float]  # None without same-identity pairs
    impostor_quantile: Optional[float]  # the IMPOSTOR_QUANTILE of the different pairs; None without any
    impostor_sd: Optional[float]  # the standard deviation of the different pairs' similarities

    def separates(self) -> Optional[bool]:
        """Whether same-identity pairs score above the impostor tail on average (None: cannot tell)."""
        if self.mean_same is None or self.impostor_quantile is None:
            return None
        return self.mean_same > self.impostor_quantile


def pair_stats(emb: np.ndarray, issame: np.ndarray) -> PairStats:
    """emb: [2P, D] unit rows, pair i = rows 2i and 2i+1; issame: bool [P]."""
    issame = np.asarray(issame, dtype=bool)
    if emb.shape[0] != 2 * issame.size:
        raise ValueError(f"expected {2 * issame.size} embeddings for {issame.size} pairs, found {emb.shape[0]}")
    sims = np.einsum("ij,ij->i", emb[0::2].astype(np.float64), emb[1::2].astype(np.float64))
    same, diff = sims[issame], sims[~issame]
    return PairStats(int(same.size), int(diff.size), float(same.mean()) if same.size else None,
                     float(np.quantile(diff, IMPOSTOR_QUANTILE)) if diff.size else None,
                     float(diff.std()) if diff.size else None)


@dataclass(frozen=True)
class Threshold:
    value: float
    chosen_by: str  # "rule" or "--threshold"
    how: str  # in words, with the numbers
    rule: Optional[dict] = None  # the impostor rule's record (ImpostorThreshold.to_dict()) when chosen by it

    def __post_init__(self):
        if not np.isfinite(self.value):
            raise ValueError(f"threshold must be finite, found {self.value}")


def default_threshold(centres: ClassCentres, *, far: float = impostor_threshold.TARGET_FAR) -> Threshold:
    """The impostor rule (module docstring) over the training images kept in `centres`."""
    t = impostor_threshold.image_threshold(centres.rule_emb, centres.rule_labels, far=far,
                                           what="pairs of training images of different classes")
    return Threshold(t.value, "rule", t.how, t.to_dict())


def given_threshold(value: float) -> Threshold:
    return Threshold(float(value), "--threshold", f"given by --threshold: {float(value):.4f}")


@dataclass(frozen=True)
class Match:
    """A suspected overlap: image `image` of set `target` is closer than the threshold to `train_class`."""

    target: str
    image: int
    train_class: int
    similarity: float


def matches(c: torch.Tensor, emb: np.ndarray, threshold: float, *, target: str) -> list[Match]:
    """Every (image, class) of one set with cosine similarity > threshold, by image, then similarity down.
    c: the class centres [C, D] (ClassCentres.centres) on the device that computes the similarities."""
    dev = c.device
    rows = max(1, MATCH_CHUNK_ENTRIES // max(1, c.shape[0]))
    found = []
    for s in range(0, emb.shape[0], rows):
        e = torch.from_numpy(np.ascontiguousarray(emb[s:s + rows])).to(dev)
        sims = e @ c.T  # [n, C]
        image, cls = torch.nonzero(sims > threshold, as_tuple=True)
        if len(found) + image.numel() > MAX_MATCHES:
            raise ThresholdError(f"{target}: more than {MAX_MATCHES} (class, image) pairs above threshold "
                                 f"{threshold:.4f}: that is the impostor distribution, not overlaps; raise "
                                 f"--threshold")
        values = sims[image, cls].double().cpu().numpy()
        for i, k, v in zip((image + s).cpu().tolist(), cls.cpu().tolist(), values.tolist()):
            found.append(Match(target, i, k, v))
    found.sort(key=lambda m: (m.image, -m.similarity, m.train_class))
    return found


@dataclass(frozen=True)
class SetAudit:
    name: str
    source: str
    images: int
    stats: PairStats
    matches: tuple  # of Match

    @property
    def flagged_images(self) -> int:
        return len({m.image for m in self.matches})

    @property
    def flagged_classes(self) -> tuple:
        return tuple(sorted({m.train_class for m in self.matches}))


def audit(centres: ClassCentres, sets: Sequence[tuple], threshold: Optional[float] = None,
          device=None, far: float = impostor_threshold.TARGET_FAR) -> tuple[Threshold, list[SetAudit]]:
    """sets: (VerificationSet, its unit embeddings [N, D]) each. The threshold (given, or the impostor rule's
    at `far` over the training images) and every set's suspected overlaps."""
    stats = {vset.name: pair_stats(emb, vset.issame) for vset, emb in sets}
    chosen = default_threshold(centres, far=far) if threshold is None else given_threshold(threshold)
    dev = pipeline.resolve_device(device if device is not None else "cpu")
    c = torch.from_numpy(np.ascontiguousarray(centres.centres)).to(dev)  # once for every set
    return chosen, [SetAudit(vset.name, vset.source, emb.shape[0], stats[vset.name],
                             tuple(matches(c, emb, chosen.value, target=vset.name)))
                    for vset, emb in sets]


def by_chance(chosen: Threshold, classes: int, images: int) -> Optional[float]:
    """How many (class, image) pairs of `classes` x `images` comparisons strangers put above a threshold
    chosen by the impostor rule, on average: its FAR x the comparisons (None for a given threshold, whose
    rate is not measured)."""
    return None if chosen.rule is None else chosen.rule["far"] * classes * images


def warnings_for(chosen: Threshold, audits: Sequence[SetAudit]) -> list[str]:
    """What makes the audit's answer doubtful: a set the model does not separate, an unreachable threshold."""
    out = []
    for a in audits:
        if a.stats.separates() is False:
            out.append(f"{a.name}: the model does not separate identities here (mean same-identity similarity "
                       f"{a.stats.mean_same:.4f} <= 99.9th percentile of different-identity similarity "
                       f"{a.stats.impostor_quantile:.4f}): the audit can miss overlaps and flag strangers")
    if chosen.value >= 1.0:
        out.append(f"threshold {chosen.value:.4f} >= 1: no similarity can exceed it, nothing can be flagged")
    return out
