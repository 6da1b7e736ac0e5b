"""Train/test identity overlap: each training class's centre against every image of the test sets.

MS1M shares identities with LFW, CFP and AgeDB; a verification score over people the backbone was trained
on is no longer a test on unseen identities. `python -m evaluate overlap` (evaluate/overlap_cli.py) flags them:

- A training class's centre: its first K keys (key order, so the same images every run) through the
  evaluator's image pass (evaluate.embed: the backbone with its flip, fused = e(x) + e(flip(x))), each
  fused embedding L2-normalised, their mean normalised again. Images are decoded as training sees them
  (pipeline.ShardSamples.image_batches).
- Every image of every verification set, through the same pass (decoded by pipeline.decode_batches at
  112 as `python -m evaluate` does), normalised.
- Every image of the sets given as people (identity folders, a .rec, shards: `--people`), the same way.
- The decision is per identity of a set (evaluate/set_identities.py: a pair set knows its identities only
  through its same-identity pairs, a set of people through its labels): an identity is taken for a
  training class when more than half of its distinct images have cosine similarity above the threshold
  with the class centre. One image is the whole of a one-image identity's evidence, and there the rule is
  the per-image one; a person with several photos is not flagged on the one photo that resembles somebody.
  The demo's figures are in docs/evaluation.md: with its small teacher a few photos of held-out people
  score above the threshold against some class, never most of one person's.

The default threshold, overridable by --threshold, is the impostor rule that `python -m evaluate audit`
uses (evaluate/impostor_threshold.py): the cosine similarity that pairs of training images of different
classes exceed at the false-accept rate --far (default 1e-5, or the smallest rate the pairs support). The
images are those averaged into the centres (up to RULE_IMAGES of them, drawn with a fixed seed), so the
threshold is in the model's own units on the data it is asked about: "a stranger scores above this once
in 1/FAR tries". The audit makes classes x identities decisions (85k MS1M classes x 5.7k LFW identities is
5e8), so the report states how many strangers that rate would let through if each identity were one image
(FAR x classes x identities): flags of that order are what chance alone gives, far more are overlaps.
The training labels are taken as they are here (`evaluate audit` is the tool that doubts them).

Why not the sets' own pairs: a .bin holds a few thousand different-identity pairs (LFW: 3000), which
measure the impostor tail only down to about 1e-3; the rule this module had before, built on them, put
the demo's small teacher's threshold above 1 (nothing could be flagged). The sets' pairs still give
each set's statistics in the report, and a warning where the model does not separate identities there
(mean same-identity similarity not above the 99.9th percentile of different-identity similarity).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from common.errors import InputError
import pipeline
from evaluate import impostor_threshold, set_identities
from evaluate.embed import DECODE_BATCHES_PER_CALL, embed_batches, embed_encoded, pass_device
from evaluate.set_identities import SetIdentities
from evaluate.verification import VerificationSet

if TYPE_CHECKING:
    from evaluate.image_sources import ImageSource

DEFAULT_PER_CLASS = 8
IMPOSTOR_QUANTILE = 0.999  # of a set's different-identity pairs: the warning's measure of separation
RULE_IMAGES = 65_536  # training images kept for the impostor rule: 128 MB at 512 dimensions, 2e9 pairs to draw from
RULE_SEED = 0
MATCH_CHUNK_ENTRIES = 2**26  # similarities computed at once: [images, classes] in float32, 256 MB
DIGEST_CHUNK = 4096  # images of a set of people read at once to tell identical ones apart
MAX_MATCHES = 1_000_000  # (identity, class) pairs per set: more means a threshold inside the impostor distribution


class ThresholdError(InputError, ValueError):
    """A threshold so low that it flags more than MAX_MATCHES (identity, class) pairs of a set."""


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
class AuditedSet:
    """One test set to audit: its images' unit embeddings [N, D] in the set's order, who is who, and how
    the report names each image (`keys[k]`: a pair set's position, a source's key)."""

    name: str
    source: str
    kind: str  # "pair set" or "people"
    emb: np.ndarray
    identities: SetIdentities
    keys: tuple
    issame: Optional[np.ndarray] = None  # a pair set's pairs, for its PairStats
    skipped: tuple = ()  # (key, reason) of images left out because they do not decode (--skip-bad)

    def __post_init__(self):
        if self.kind not in ("pair set", "people"):
            raise ValueError(f"kind must be 'pair set' or 'people', found {self.kind!r}")
        if len(self.keys) != self.emb.shape[0] or (self.issame is not None and 2 * self.issame.size != len(self.keys)):
            raise ValueError(f"{self.name}: {self.emb.shape[0]} embeddings, {len(self.keys)} keys"
                             + ("" if self.issame is None else f", {self.issame.size} pairs"))


def pair_set(vset: VerificationSet, emb: np.ndarray) -> AuditedSet:
    """A verification pair set with its unit embeddings (set_embeddings): identities from its pairs."""
    return AuditedSet(vset.name, vset.source or vset.name, "pair set", emb,
                      set_identities.from_pairs(vset.images, vset.issame), tuple(range(len(vset.images))),
                      vset.issame)


def people_set(name: str, source: "ImageSource", emb: np.ndarray, positions: Optional[np.ndarray] = None,
               skipped: tuple = ()) -> AuditedSet:
    """A labelled image source (identity folders, a .rec, shards) with the unit embeddings of its images at
    `positions` (default: all, in source order); `skipped`: (key, reason) of the images left out."""
    if source.labels is None:
        raise ValueError(f"{source.path}: a {source.kind} has no labels")
    positions = np.arange(len(source)) if positions is None else np.asarray(positions, dtype=np.int64)
    labels = source.labels[positions]
    names = tuple(source.identities[p] for p in positions) if source.identities is not None else \
        tuple(str(g) for g in labels)
    digests = [hashlib.sha256(b).digest() for s in range(0, positions.size, DIGEST_CHUNK)  # a set of any size
               for b in source.read(positions[s:s + DIGEST_CHUNK].tolist())]
    return AuditedSet(name, source.path, "people", emb, set_identities.from_labels(digests, labels, names),
                      tuple(source.keys[p] for p in positions), skipped=skipped)


@dataclass(frozen=True)
class Overlap:
    """Identity `identity` of set `target` is taken for training class `train_class`: more than half of its
    `images` distinct images (`above`: the keys of those) are closer to the class centre than the threshold."""

    target: str
    identity: str
    images: int
    above: tuple
    train_class: int
    median_similarity: float
    max_similarity: float


def _identity_chunks(starts: np.ndarray, max_rows: int) -> list[tuple[int, int]]:
    """(first, end) identity ranges of at most max_rows images each, or one identity where it has more."""
    chunks, lo = [], 0
    while lo < starts.size - 1:
        hi = max(lo + 1, int(np.searchsorted(starts, starts[lo] + max_rows, side="right")) - 1)
        chunks.append((lo, hi))
        lo = hi
    return chunks


def overlaps(c: torch.Tensor, s: AuditedSet, threshold: float) -> tuple[list[Overlap], int]:
    """Every (identity, class) of one set where more than half the identity's distinct images have cosine
    similarity > threshold with the class centre, by identity (the set's order), then median similarity
    down; and how many distinct images are above the threshold with some class (what a per-image rule
    would flag). c: the class centres [C, D] (ClassCentres.centres) on the device that computes them."""
    ids, dev, classes = s.identities, c.device, c.shape[0]
    sizes = ids.sizes
    found, any_above = [], 0
    for lo, hi in _identity_chunks(ids.starts, max(1, MATCH_CHUNK_ENTRIES // max(1, classes))):
        rows = ids.images[ids.starts[lo]:ids.starts[hi]]
        first = ids.starts[lo:hi + 1] - ids.starts[lo]
        e = torch.from_numpy(np.ascontiguousarray(s.emb[rows])).to(dev)
        owner = torch.from_numpy(np.repeat(np.arange(hi - lo), sizes[lo:hi])).to(dev)
        n_images = torch.from_numpy(sizes[lo:hi]).to(dev)[:, None]  # each identity's distinct images
        width = max(1, MATCH_CHUNK_ENTRIES // rows.size)
        image_above = torch.zeros(rows.size, dtype=torch.bool, device=dev)
        for k0 in range(0, classes, width):  # [rows, width] at a time, for an identity of many images
            sims = e @ c[k0:k0 + width].T
            above = sims > threshold
            image_above |= above.any(dim=1)
            votes = torch.zeros(hi - lo, sims.shape[1], device=dev).index_add_(0, owner, above.float())
            ident, cls = torch.nonzero(votes * 2 > n_images, as_tuple=True)
            if len(found) + ident.numel() > MAX_MATCHES:
                raise ThresholdError(f"{s.name}: more than {MAX_MATCHES} (identity, class) pairs above threshold "
                                     f"{threshold:.4f}: that is the impostor distribution, not overlaps; raise "
                                     f"--threshold")
            for i, k in zip(ident.tolist(), cls.tolist()):
                col = sims[first[i]:first[i + 1], k].double().cpu().numpy()
                keys = tuple(s.keys[p] for p in rows[first[i]:first[i + 1]][col > threshold])
                found.append((lo + i, Overlap(s.name, ids.names[lo + i], int(col.size), keys, k0 + k,
                                              float(np.median(col)), float(col.max()))))
        any_above += int(image_above.sum())
    found.sort(key=lambda f: (f[0], -f[1].median_similarity, f[1].train_class))
    return [o for _, o in found], any_above


@dataclass(frozen=True)
class SetAudit:
    set: AuditedSet
    stats: Optional[PairStats]  # None for a set of people (no pairs)
    overlaps: tuple  # of Overlap
    images_above: int  # distinct images above the threshold with some class centre

    @property
    def name(self) -> str:
        return self.set.name

    @property
    def images(self) -> int:
        return len(self.set.keys)

    @property
    def single_image_identities(self) -> int:
        return int(np.sum(self.set.identities.sizes == 1))

    @property
    def flagged_identities(self) -> tuple:
        return tuple(dict.fromkeys(o.identity for o in self.overlaps))

    @property
    def flagged_single_image(self) -> int:
        """Flagged identities the set shows in one image only: one photo's word, the weakest evidence."""
        return len({o.identity for o in self.overlaps if o.images == 1})

    @property
    def flagged_classes(self) -> tuple:
        return tuple(sorted({o.train_class for o in self.overlaps}))


def audit(centres: ClassCentres, sets: Sequence[AuditedSet], threshold: Optional[float] = None,
          device=None, far: float = impostor_threshold.TARGET_FAR) -> tuple[Threshold, list[SetAudit]]:
    """The threshold (given, or the impostor rule's at `far` over the training images) and every set's
    flagged (identity, class) pairs."""
    chosen = default_threshold(centres, far=far) if threshold is None else given_threshold(threshold)
    dev = pipeline.resolve_device(device if device is not None else "cpu")
    c = torch.from_numpy(np.ascontiguousarray(centres.centres)).to(dev)  # once for every set
    audits = []
    for s in sets:
        found, images_above = overlaps(c, s, chosen.value)
        audits.append(SetAudit(s, None if s.issame is None else pair_stats(s.emb, s.issame), tuple(found),
                               images_above))
    return chosen, audits


def by_chance(chosen: Threshold, classes: int, identities: int) -> Optional[float]:
    """How many (identity, class) pairs strangers would put above a threshold chosen by the impostor rule
    if each identity were one image: its FAR x classes x identities (None for a given threshold, whose rate
    is not measured). An identity of n images needs more than n/2 of them above: for a stranger that is
    rarer still (at most 2 FAR, by Markov's inequality; about FAR^(n/2) where its photos vary independently)."""
    return None if chosen.rule is None else chosen.rule["far"] * classes * identities


def warnings_for(chosen: Threshold, audits: Sequence[SetAudit]) -> list[str]:
    """What makes the audit's answer doubtful: a set the model does not separate, an unreachable threshold."""
    out = []
    for a in audits:
        if a.stats is not None and a.stats.separates() is False:
            out.append(f"{a.name}: the model does not separate identities here (mean same-identity similarity "
                       f"{a.stats.mean_same:.4f} <= 99.9th percentile of different-identity similarity "
                       f"{a.stats.impostor_quantile:.4f}): the audit can miss overlaps and flag strangers")
    if chosen.value >= 1.0:
        out.append(f"threshold {chosen.value:.4f} >= 1: no similarity can exceed it, nothing can be flagged")
    return out
