"""Who is who in a test set: its images grouped into identities, each distinct image counted once.

The overlap audit (evaluate/overlap.py) decides per identity, not per image: one photo of a stranger can
look like a training class to the model, most photos of that stranger do not. A set says who is who in
one of two ways:
- a pair set (.bin, CVLFace arrow): only through its same-identity pairs, so an identity is the images
  that same-identity pairs join (transitively); an image in no such pair is an identity of its own;
- a set of people (identity folders, a .rec, shards): through its labels.
The same bytes at two positions (a .bin repeats an image in several pairs) are one image: it is one piece
of evidence, however often the set shows it (in a set of people, within one identity: its labels say
who).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass(frozen=True)
class SetIdentities:
    """images [M]: positions in the set of its distinct images, grouped by identity (ascending within
    one); starts [I + 1]: identity i's images are images[starts[i]:starts[i + 1]]; names [I]: how the
    report names each (a pair set: its first image's position; people: the label's name)."""

    images: np.ndarray
    starts: np.ndarray
    names: tuple

    def __post_init__(self):
        if self.starts.size != len(self.names) + 1 or self.starts[0] != 0 or self.starts[-1] != self.images.size \
                or np.any(np.diff(self.starts) < 1):
            raise ValueError(f"starts must run from 0 to {self.images.size} in steps >= 1 over {len(self.names)} "
                             f"identities, found {self.starts.tolist()[:8]}")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def sizes(self) -> np.ndarray:
        """int64 [I]: each identity's distinct images."""
        return np.diff(self.starts)


def _first_of_each_bytes(images: Sequence[bytes]) -> np.ndarray:
    """int64 [N]: for each position, the first position holding the same bytes."""
    first: dict = {}
    return np.array([first.setdefault(bytes(b), i) for i, b in enumerate(images)], dtype=np.int64)


def _grouped(identity: np.ndarray, distinct: np.ndarray, names_of) -> SetIdentities:
    """SetIdentities of the positions `distinct`, identity[k] the group of distinct[k] (any integers);
    identities ordered by their first image, each named by names_of(group, first position)."""
    first_pos = {}
    for g, p in zip(identity.tolist(), distinct.tolist()):
        first_pos.setdefault(g, p)
    groups = sorted(first_pos, key=first_pos.get)
    order_of = {g: k for k, g in enumerate(groups)}
    rank = np.array([order_of[g] for g in identity.tolist()], dtype=np.int64)
    order = np.lexsort((distinct, rank))
    counts = np.bincount(rank, minlength=len(groups))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return SetIdentities(distinct[order], starts, tuple(names_of(g, first_pos[g]) for g in groups))


def from_pairs(images: Sequence[bytes], issame: Sequence[bool]) -> SetIdentities:
    """A pair set's identities (pair i = images 2i, 2i+1): joined by its same-identity pairs, identical
    bytes one image; each named by its first image's position."""
    if len(images) != 2 * len(issame):
        raise ValueError(f"expected {2 * len(issame)} images for {len(issame)} pairs, found {len(images)}")
    same_as = _first_of_each_bytes(images)
    same = np.flatnonzero(np.asarray(issame, dtype=bool))
    n = len(images)
    links = coo_matrix((np.ones(same.size), (same_as[2 * same], same_as[2 * same + 1])), shape=(n, n))
    _, identity = connected_components(links, directed=False)
    distinct = np.flatnonzero(same_as == np.arange(n))
    return _grouped(identity[distinct].astype(np.int64), distinct, lambda g, first: str(first))


def from_labels(images: Sequence[bytes], labels: np.ndarray, names: Sequence[str]) -> SetIdentities:
    """A set of people's identities: image k is `names[k]`'s (labels[k] its number); identical images within
    one identity one image (`images`: each image's bytes, or a digest of them)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size != len(images) or len(names) != len(images):
        raise ValueError(f"{len(images)} images with {labels.size} labels and {len(names)} names")
    first: dict = {}
    keep = np.array([first.setdefault((int(g), bytes(b)), k) == k for k, (g, b) in enumerate(zip(labels, images))],
                    dtype=bool)
    distinct = np.flatnonzero(keep)
    return _grouped(labels[distinct], distinct, lambda g, first_pos: str(names[first_pos]))
