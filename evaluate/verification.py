"""Pair verification on LFW-style sets: the sets, the image pass and insightface's 10-fold metric.

Protocol (insightface `recognition/arcface_torch/eval/verification.py`, which CVLFace reuses):
embedding = L2-normalise(e(x) + e(flip(x))); distance = squared L2 of a pair; thresholds
0, 0.01, ..., 3.99; 10 contiguous folds (KFold, no shuffle); the threshold with the best accuracy on
the 9 training folds is applied to the test fold; accuracy = mean and std of the 10 test accuracies.
The accuracy part gives the same numbers as insightface's code, digit for digit (tests prove it).

VAL@FAR=1e-3 is where we differ, on purpose. insightface fits scipy's interp1d from the training-fold
FAR curve to thresholds 0, 0.001, ..., 3.999; that curve is a step function whose FAR values repeat,
so the "interpolation" depends on how scipy treats duplicate x values (current scipy refuses them).
We take the largest threshold whose training-fold FAR does not exceed the target (FAR is
non-decreasing in the threshold, and threshold 0 accepts nothing, so one always exists), apply it to
the test fold, and report the mean and std of VAL and the mean FAR there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import sklearn.preprocessing
from sklearn.model_selection import KFold

from common.safe_pickle import DataFileError, read_pairs_bin
from evaluate.readers import read_image_folder

# Identical to insightface's np.arange calls: the grid values must match bit for bit.
ACC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
VAL_FAR_TARGET = 1e-3

# insightface's names for the seven standard sets; vgg2_fp is the VGGFace2 frontal-profile set.
STANDARD_SETS = ("lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw", "vgg2_fp")


@dataclass(frozen=True)
class VerificationSet:
    """Encoded images, two per pair (pair i = images 2i and 2i+1), and whether each pair matches."""

    name: str
    images: tuple  # of bytes, one encoded image each
    issame: np.ndarray  # bool [P]
    source: str = ""  # the file or folder it was read from, for messages

    def __post_init__(self):
        if self.issame.ndim != 1 or self.issame.dtype != np.bool_:
            raise ValueError(f"{self.name}: issame must be a 1-D bool array, found "
                             f"{self.issame.dtype} with shape {self.issame.shape}")
        if len(self.images) != 2 * len(self.issame):
            raise ValueError(f"{self.name}: expected 2 images per pair = {2 * len(self.issame)} "
                             f"images, found {len(self.images)}")


def load_bin(path: str | Path) -> VerificationSet:
    """Read an insightface `.bin` verification set (a pickle of (bins, issame_list)).

    Read by common.safe_pickle.read_pairs_bin, with its data-only unpickler.
    """
    path = Path(path)
    images, flags = read_pairs_bin(path)
    return VerificationSet(name=path.stem, images=images, issame=flags, source=str(path))


def load_arrow_set(folder: str | Path) -> VerificationSet:
    """Read CVLFace's layout: a `datasets.save_to_disk` folder with columns image, index, is_same.

    Rows are ordered by `index`; pair i is rows 2i and 2i+1 and its label is `is_same` of row 2i
    (CVLFace's `is_same[::2]`).
    """
    folder = Path(folder)
    table, order, images = read_image_folder(folder, columns=("is_same",))
    is_same = np.asarray(table.column("is_same").to_numpy(zero_copy_only=False), dtype=bool)[order]
    if len(images) % 2:
        raise DataFileError(f"{folder}: a pair set needs an even number of rows, found {len(images)}")
    if not np.array_equal(is_same[0::2], is_same[1::2]):
        bad = int(np.flatnonzero(is_same[0::2] != is_same[1::2])[0])
        raise DataFileError(f"{folder}: rows {2 * bad} and {2 * bad + 1} form a pair but disagree on is_same")
    return VerificationSet(name=folder.name, images=images, issame=is_same[0::2], source=str(folder))


def load_set(path: str | Path) -> VerificationSet:
    """A `.bin` file or a CVLFace arrow folder, by what `path` is."""
    path = Path(path)
    if path.is_dir():
        return load_arrow_set(path)
    if path.suffix == ".bin":
        return load_bin(path)
    raise DataFileError(f"{path}: expected an insightface .bin file or a CVLFace arrow folder")


def fold_problem(issame, nfolds: int = 10) -> Optional[str]:
    """Why `evaluate` cannot run on these pairs (None when it can): the 10-fold metric needs at least
    nfolds pairs, and both same and different pairs in every fold's training and test parts. Depends on
    the pairs' labels only, so it can be checked before any image is embedded."""
    labels = np.asarray(issame, dtype=bool)
    if not 2 <= nfolds <= labels.shape[0]:
        return f"{labels.shape[0]} pairs: the {nfolds}-fold metric needs at least {nfolds}"
    for k, (train, test) in enumerate(KFold(n_splits=nfolds, shuffle=False).split(np.arange(labels.shape[0]))):
        n_diff, n_same_t, n_diff_t = int((~labels[train]).sum()), int(labels[test].sum()), int((~labels[test]).sum())
        if n_diff == 0 or n_same_t == 0 or n_diff_t == 0:
            return (f"fold {k} of {nfolds}: VAL@FAR needs both same and different pairs in its training and "
                    f"test parts; found {n_diff} different pairs in training, {n_same_t} same and {n_diff_t} "
                    f"different in test")
    return None


def _fold_counts(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray):
    """(tp, fp, n_same, n_diff) per threshold, with 'same' predicted where dist < threshold.

    searchsorted(side="left") counts the distances strictly below each threshold: the same integer
    counts as insightface's per-threshold np.less loop, so the accuracies are the same floats.
    """
    same = np.sort(dist[issame])
    diff = np.sort(dist[~issame])
    tp = np.searchsorted(same, thresholds, side="left")
    fp = np.searchsorted(diff, thresholds, side="left")
    return tp, fp, same.size, diff.size


def evaluate(embeddings, issame, nfolds: int = 10) -> dict:
    """insightface's verification metric over fused, L2-normalised embeddings.

    embeddings: [2P, D], pair i = rows 2i and 2i+1 (numpy or torch; computed in float64 as
    insightface's image pass holds them). issame: [P] bools.
    Returns fractions: acc, std (over the test folds), val, val_std, far (at FAR 1e-3, see the
    module docstring), best_threshold (mean of the per-fold thresholds) and nfolds.
    """
    emb = np.asarray(embeddings.detach().cpu() if hasattr(embeddings, "detach") else embeddings,
                     dtype=np.float64)
    labels = np.asarray(issame, dtype=bool)
    if emb.ndim != 2 or emb.shape[0] != 2 * labels.shape[0]:
        raise ValueError(f"embeddings must be [2P, D] for P={labels.shape[0]} pairs, found {emb.shape}")
    problem = fold_problem(labels, nfolds)
    if problem is not None:
        raise ValueError(problem)
    # Same expression as insightface, so every distance is the same float.
    dist = np.sum(np.square(np.subtract(emb[0::2], emb[1::2])), 1)
    idx = np.arange(labels.shape[0])

    acc = np.zeros(nfolds)
    best = np.zeros(nfolds)
    val = np.zeros(nfolds)
    far = np.zeros(nfolds)
    for k, (train, test) in enumerate(KFold(n_splits=nfolds, shuffle=False).split(idx)):
        tp, fp, n_same, n_diff = _fold_counts(dist[train], labels[train], ACC_THRESHOLDS)
        # acc = (tp + tn) / n with tn = n_diff - fp; argmax takes the first best, as insightface's.
        train_acc = (tp + (n_diff - fp)).astype(np.float64) / train.size
        t = ACC_THRESHOLDS[int(np.argmax(train_acc))]
        best[k] = t
        tp_t, fp_t, n_same_t, n_diff_t = _fold_counts(dist[test], labels[test], np.array([t]))
        acc[k] = float(tp_t[0] + (n_diff_t - fp_t[0])) / test.size

        _, fp_v, _, _ = _fold_counts(dist[train], labels[train], VAL_THRESHOLDS)
        ok = np.flatnonzero(fp_v / n_diff <= VAL_FAR_TARGET)  # never empty: fp_v[0] == 0
        tv = VAL_THRESHOLDS[ok[-1]]
        tp_v, fp_vt, _, _ = _fold_counts(dist[test], labels[test], np.array([tv]))
        val[k] = tp_v[0] / n_same_t
        far[k] = fp_vt[0] / n_diff_t

    return {
        "acc": float(np.mean(acc)), "std": float(np.std(acc)),
        "val": float(np.mean(val)), "val_std": float(np.std(val)), "far": float(np.mean(far)),
        "best_threshold": float(np.mean(best)), "nfolds": nfolds,
    }


def normalised_embeddings(model, vset: VerificationSet, *, device=None, batch_size: int = 256,
                          progress: bool = True) -> tuple[np.ndarray, float]:
    """(fused embeddings L2-normalised, float64 [2P, D]; xnorm): the image pass as `test` makes it."""
    from evaluate.embed import embed_encoded

    emb = embed_encoded(model, vset.images, device=device, batch_size=batch_size,
                        desc=f"verify {vset.name}" if progress else None, source=vset.source or vset.name)
    # float64 and sklearn's normalize, as insightface's `test` does.
    return sklearn.preprocessing.normalize(emb.fused.astype(np.float64)), emb.xnorm


def test(model, vset: VerificationSet, *, device=None, batch_size: int = 256, nfolds: int = 10,
         progress: bool = True) -> dict:
    """The image pass and the metric: what the training loop's callback and the CLI both call."""
    fused, xnorm = normalised_embeddings(model, vset, device=device, batch_size=batch_size, progress=progress)
    return metrics(fused, xnorm, vset.issame, nfolds=nfolds)


def metrics(fused: np.ndarray, xnorm: float, issame: np.ndarray, *, nfolds: int = 10,
            fars: Optional[Sequence[float]] = None) -> dict:
    """`evaluate`'s dict plus xnorm (mean L2 norm of the raw embeddings of both passes), pairs (the number of
    pairs) and thresholds (evaluate.thresholds.operating_points: the cosine threshold and TAR at FAR 1e-1,
    1e-2, ... down to what the set's impostor pairs support, or at `fars`), from the image pass's output
    (normalised_embeddings). `python -m evaluate threshold` keeps the embeddings for its ROC, so it runs
    the pass and calls this itself."""
    from evaluate.thresholds import operating_points, scores

    result = evaluate(fused, issame, nfolds=nfolds)
    result["xnorm"] = xnorm
    result["pairs"] = int(issame.size)
    result["thresholds"] = operating_points(scores(fused), issame, fars)
    return result
