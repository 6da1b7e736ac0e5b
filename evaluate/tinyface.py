"""TinyFace identification (CVLFace's protocol): probes against matches plus distractors, CMC.

CVLFace `evaluations/tinyface/evaluate.py`: features are e + e_flip, L2-normalised; the label of an
image is the integer prefix of its file name before the first "_"; distractors get label -100; the
gallery is the matches followed by the distractors; score = cosine; CMC rank-1/5/20 in percent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from common.safe_pickle import DataFileError
from evaluate.ranking import as_float32, identification
from evaluate.readers import load_metadata, read_image_folder

DISTRACTOR_LABEL = -100
DEFAULT_RANKS = (1, 5, 20)


def _l2(x) -> np.ndarray:
    x = as_float32(x)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def cmc(probe_feats, probe_labels, gallery_feats, gallery_labels, ranks: Sequence[int] = DEFAULT_RANKS) -> dict:
    """{rank: percent of mated probes with a mate in the top `rank`} over cosine scores."""
    result = identification(_l2(probe_feats), probe_labels, _l2(gallery_feats), gallery_labels, ranks=ranks)
    return {k: 100.0 * v for k, v in result["rank"].items()}


def _key(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _label(path: str) -> int:
    prefix = os.path.basename(path).split("_")[0]
    if not prefix.lstrip("-").isdigit():
        raise DataFileError(f"TinyFace file name {path!r} should start with an integer identity and '_'")
    return int(prefix)


@dataclass(frozen=True)
class TinyFaceSet:
    """Encoded images in index order, and the protocol as row numbers into them."""

    name: str
    images: tuple
    probe_rows: np.ndarray
    probe_labels: np.ndarray
    gallery_rows: np.ndarray  # matches, then distractors
    gallery_labels: np.ndarray
    source: str = ""  # the folder it was read from, for messages

    def __post_init__(self):
        if self.probe_rows.shape != self.probe_labels.shape or self.gallery_rows.shape != self.gallery_labels.shape:
            raise ValueError(f"{self.name}: rows and labels differ in length")
        n = len(self.images)
        for rows, what in ((self.probe_rows, "probe"), (self.gallery_rows, "gallery")):
            if rows.size and (rows.min() < 0 or rows.max() >= n):
                raise ValueError(f"{self.name}: {what} row out of range [0, {n})")


def load_tinyface(folder: str | Path) -> TinyFaceSet:
    """CVLFace's `tinyface_aligned_pad_0.1` folder: arrow (image, index, path) + metadata.pt."""
    folder = Path(folder)
    table, order, images = read_image_folder(folder, columns=("path",))
    meta = load_metadata(folder / "metadata.pt")
    paths = table.column("path").to_pylist()
    paths = [paths[i] for i in order]
    row_of = {}
    for i, p in enumerate(paths):
        row_of.setdefault(_key(p), i)

    def rows(key: str) -> tuple[np.ndarray, list[str]]:
        if key not in meta:
            raise DataFileError(f"{folder / 'metadata.pt'}: no {key!r}; found {sorted(meta)}")
        listed = [str(p) for p in meta[key]]
        missing = [p for p in listed if _key(p) not in row_of]
        if missing:
            raise DataFileError(f"{folder}: {len(missing)} of metadata {key!r} are not among the images, "
                                f"e.g. {missing[0]!r}")
        return np.array([row_of[_key(p)] for p in listed], dtype=np.int64), listed

    probe_rows, probe_paths = rows("probe_paths")
    match_rows, match_paths = rows("gallery_paths")
    distractor_rows, _ = rows("distractor_paths")
    try:
        gallery_labels = np.r_[np.array([_label(p) for p in match_paths], dtype=np.int64),
                               np.full(distractor_rows.size, DISTRACTOR_LABEL, dtype=np.int64)]
        probe_labels = np.array([_label(p) for p in probe_paths], dtype=np.int64)
    except DataFileError as err:
        raise DataFileError(f"{folder / 'metadata.pt'}: {err}") from None
    return TinyFaceSet(name=folder.name, images=images, probe_rows=probe_rows, probe_labels=probe_labels,
                       gallery_rows=np.r_[match_rows, distractor_rows], gallery_labels=gallery_labels,
                       source=str(folder))


def run(model, tset: TinyFaceSet, *, device=None, batch_size: int = 256, ranks=DEFAULT_RANKS,
        progress: bool = True) -> dict:
    """Embed every image once (with its flip) and report CMC in percent: {"rank-1": ..., ...}."""
    from evaluate.embed import embed_encoded

    emb = embed_encoded(model, tset.images, device=device, batch_size=batch_size,
                        desc=f"tinyface {tset.name}" if progress else None, source=tset.source or tset.name)
    scores = cmc(emb.fused[tset.probe_rows], tset.probe_labels, emb.fused[tset.gallery_rows],
                 tset.gallery_labels, ranks)
    return {f"rank-{k}": v for k, v in scores.items()} | {"probes": int(tset.probe_rows.size),
                                                            "gallery": int(tset.gallery_rows.size)}
