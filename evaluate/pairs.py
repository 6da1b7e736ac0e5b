"""A verification pair set from a folder of identity folders, laid out so that the 10 folds share no identity.

The evaluation (evaluate.verification) splits P pairs into 10 contiguous folds, sklearn's KFold without
shuffling (fold k = one block of consecutive pairs), chooses its threshold on nine and tests on the tenth.
As in LFW's protocol, the tenth fold's people must be new to the nine: so the identities are dealt into 10
groups first (shuffled by the seed, largest first, in snake order, so that every group gets one of the ten
largest identities and the groups' image counts stay close), and fold k's pairs, genuine and impostor, are
drawn from group k alone. Half the pairs are genuine (ceil(P/2), spread over the folds in proportion),
half impostor. Genuine pairs go round the group's identities of two or more images, each time a pair of
that identity's images not drawn before; impostor pairs take two of the group's identities (one-image
identities too) and an image of each, never the same two images twice. Pairs within a fold are shuffled,
and so is the order of the two images of a pair. Everything follows from the seed.

The images are stored as they are (their JPEG or PNG bytes, checked to decode in full first); any other
format is refused by name. With landmarks they are aligned first (evaluate.landmarks) and stored as PNG.
The .bin is insightface's: a pickle of (list of encoded images, list of bools) (convert.synthetic.write_bin,
which the demo's synthetic set goes through too); a CSV beside it names each pair's images and fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
from sklearn.model_selection import KFold

from common.errors import InputError
from convert.synthetic import write_bin
from evaluate.image_sources import ImageSource
from evaluate.landmarks import aligned_png
from evaluate.report import write_csv
from pipeline.image_check import decode_problem

NFOLDS = 10
_JPEG, _PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
_STREAM = 0x9A13  # the seed's stream for pair sets, apart from convert.synthetic's


class PairSetError(InputError, ValueError):
    """A folder from which the asked pair set cannot be drawn; the message says why and what would do."""


@dataclass(frozen=True)
class Pair:
    fold: int
    same: bool
    first: int  # image positions in the source
    second: int


def fold_sizes(pairs: int, nfolds: int = NFOLDS) -> list[int]:
    """Pairs per fold exactly as the evaluation's KFold cuts them."""
    return [len(test) for _, test in KFold(n_splits=nfolds, shuffle=False).split(np.arange(pairs))]


def deal_identities(counts: np.ndarray, rng: np.random.Generator, nfolds: int = NFOLDS) -> list[list[int]]:
    """Identity numbers dealt into nfolds groups: shuffled, then the largest first, in snake order."""
    order = rng.permutation(len(counts))
    order = order[np.argsort(-counts[order], kind="stable")]
    groups: list[list[int]] = [[] for _ in range(nfolds)]
    for j, identity in enumerate(order):
        lap, pos = divmod(j, nfolds)
        groups[pos if lap % 2 == 0 else nfolds - 1 - pos].append(int(identity))
    return groups


def _genuine(group: list[int], images: list[np.ndarray], n: int, rng: np.random.Generator, fold: int) -> list[tuple]:
    multi = [g for g in group if len(images[g]) >= 2]
    available = sum(len(images[g]) * (len(images[g]) - 1) // 2 for g in multi)
    if n > available:
        raise PairSetError(f"fold {fold}: its identities give {available} distinct genuine pairs, {n} asked")
    queues, taken = {}, {}  # each identity's distinct pairs in a random order, made when first needed
    out, turn = [], rng.permutation(multi).tolist()
    while len(out) < n:
        for g in list(turn):
            if len(out) == n:
                break
            if g not in queues:
                a, b = np.triu_indices(len(images[g]), 1)
                perm = rng.permutation(a.size)
                queues[g], taken[g] = (images[g][a[perm]], images[g][b[perm]]), 0
            if taken[g] == queues[g][0].size:
                turn.remove(g)
                continue
            out.append((int(queues[g][0][taken[g]]), int(queues[g][1][taken[g]])))
            taken[g] += 1
    return out


def _impostor(group: list[int], images: list[np.ndarray], n: int, rng: np.random.Generator, fold: int) -> list[tuple]:
    sizes = np.array([len(images[g]) for g in group])
    available = (sizes.sum() ** 2 - (sizes ** 2).sum()) // 2
    if n > available:
        raise PairSetError(f"fold {fold}: its identities give {available} distinct impostor pairs, {n} asked")
    seen, out, tries = set(), [], 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 10_000:
            raise PairSetError(f"fold {fold}: found only {len(out)} distinct impostor pairs of {n} asked among "
                               f"{available}; ask for fewer pairs")
        a, b = rng.choice(len(group), size=2, replace=False)
        x, y = int(rng.choice(images[group[a]])), int(rng.choice(images[group[b]]))
        if (min(x, y), max(x, y)) not in seen:
            seen.add((min(x, y), max(x, y)))
            out.append((x, y))
    return out


def draw(labels: np.ndarray, pairs: int, seed: int, nfolds: int = NFOLDS, where: str = "") -> list[Pair]:
    """The pairs (source image positions) for images of identities `labels` [N]: see the module docstring."""
    if pairs < 2 * nfolds:
        raise PairSetError(f"--pairs {pairs}: the {nfolds} folds need a genuine and an impostor pair each, at least "
                           f"{2 * nfolds} pairs")
    ids = np.unique(labels)
    images = [np.flatnonzero(labels == i) for i in ids]
    counts = np.array([len(x) for x in images])
    multi = int((counts >= 2).sum())
    if len(ids) < 2 * nfolds or multi < nfolds:
        raise PairSetError(f"{where}: {len(ids)} identities, {multi} of them with two or more images; {nfolds} folds "
                           f"disjoint in identities need at least {2 * nfolds} identities (two a fold, for impostor "
                           f"pairs), {nfolds} of them with two or more images (for genuine pairs)")
    rng = np.random.default_rng([seed, _STREAM])
    groups = deal_identities(counts, rng, nfolds)
    sizes = fold_sizes(pairs, nfolds)
    ends = np.cumsum(sizes)
    genuine_upto = (ends + 1) // 2  # ceil(cumulative / 2): ceil(P / 2) genuine pairs in all, spread evenly
    out: list[Pair] = []
    for k, group in enumerate(groups):
        n_same = int(genuine_upto[k] - (genuine_upto[k - 1] if k else 0))
        try:
            drawn = [(True, p) for p in _genuine(group, images, n_same, rng, k)]
            drawn += [(False, p) for p in _impostor(group, images, sizes[k] - n_same, rng, k)]
        except PairSetError as err:
            raise PairSetError(f"{where}: {err}; ask for fewer --pairs or add images") from None
        for j in rng.permutation(len(drawn)):
            same, (x, y) = drawn[j]
            if rng.random() < 0.5:
                x, y = y, x
            out.append(Pair(k, same, x, y))
    return out


def check_formats(source: ImageSource, chunk: int = 1024) -> None:
    """PairSetError naming the first image of `source` that is no JPEG or PNG, read `chunk` at a time."""
    for s in range(0, len(source), chunk):
        positions = list(range(s, min(s + chunk, len(source))))
        for i, data in zip(positions, source.read(positions)):
            if not bytes(data[:8]).startswith((_JPEG, _PNG)):
                raise PairSetError(f"{source.name(i)}: not a JPEG or PNG (starts with {bytes(data[:8])!r}); a .bin "
                                   f"stores the images as they are, and the evaluation reads JPEG and PNG: convert "
                                   f"it first")


def stored_images(source: ImageSource, positions: list[int], landmarks: Optional[np.ndarray]) -> dict[int, bytes]:
    """{position: the bytes the .bin stores}: the file as it is (decoding in full; check_formats has found it
    a JPEG or PNG), or the aligned crop as PNG."""
    out = {}
    for i, data in zip(positions, source.read(positions)):
        data = bytes(data)
        if landmarks is not None:
            out[i] = aligned_png(data, landmarks[i], source.name(i))
            continue
        problem = decode_problem(data)
        if problem is not None:
            raise PairSetError(f"{source.name(i)}: does not decode ({problem})")
        out[i] = data
    return out


def write(path, source: ImageSource, drawn: list[Pair], stored: dict[int, bytes]) -> str:
    """The .bin at `path` and its CSV listing (pair, fold, same, first, second) beside it (.csv)."""
    bins = [stored[i] for p in drawn for i in (p.first, p.second)]
    write_bin(path, bins, [p.same for p in drawn])
    listing = str(path)[:-len(".bin")] + ".csv" if str(path).endswith(".bin") else f"{path}.csv"
    write_csv(listing, ({"pair": n, "fold": p.fold, "same": int(p.same), "first": source.keys[p.first],
                         "second": source.keys[p.second]} for n, p in enumerate(drawn)),
              ("pair", "fold", "same", "first", "second"))
    return listing
