"""Write the synthetic identity dataset: an insightface-layout .rec, identity folders, or a .bin pair set
(write_bin: insightface's .bin format, also for `python -m evaluate pairs`).

Images come from `faces.render`, encoded as JPEG quality 95, generated in parallel over
processes (one task per identity) and written in identity order, so the output depends only on
the arguments, never on the number of workers. A dataset is written under common.files.output_lock on its
folder, and never over the files of one already there unless `overwrite`.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import simplejpeg
from tqdm import tqdm

from common.errors import InputError
from common.files import atomic_path, output_lock, write_atomic
from convert.recordio import IRHeader, RecordWriter, pack
from convert.synthetic.faces import render
from convert.worker_pool import spawn_pool

JPEG_QUALITY = 95
FORMATS = ("rec", "folder")
_PAIR_STREAM = 0x9A12
REC_FILES = ("train.rec", "train.idx", "property")
_IDENTITY_FOLDER = re.compile(r"[0-9]{6}")  # fmt "folder": out/<identity, 6 digits>/


class SynthError(InputError, ValueError):
    """A synthetic dataset that cannot be written as asked; the message names the argument or the path."""


def _encode_identity(task: tuple) -> list:
    seed, identity, images = task
    pixels = render(seed, identity, images)
    return [simplejpeg.encode_jpeg(p, quality=JPEG_QUALITY, colorspace="RGB") for p in pixels]


def _identity_images(
    seed: int, tasks: Sequence[tuple], workers: Optional[int], desc: str, total_images: int
) -> Iterator[list]:
    """JPEG bytes of each task (identity, image numbers) in task order, rendered by `workers` processes."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    jobs = [(seed, identity, list(images)) for identity, images in tasks]
    bar = tqdm(total=total_images, desc=desc, unit="img", disable=total_images < 2000)
    try:
        if workers == 1 or total_images < 256:
            for job in jobs:
                out = _encode_identity(job)
                bar.update(len(out))
                yield out
            return
        with spawn_pool(workers) as pool:
            for out in pool.imap(_encode_identity, jobs, chunksize=4):
                bar.update(len(out))
                yield out
    finally:
        bar.close()


def _check_counts(identities: int, per_identity: int, first_identity: int) -> None:
    for name, value, least in (("identities", identities, 1), ("per_identity", per_identity, 1),
                               ("first_identity", first_identity, 0)):
        if value < least:
            raise SynthError(f"{name} must be >= {least}, found {value}")


def write_synthetic(
    out: Union[str, os.PathLike],
    identities: int,
    per_identity: int,
    seed: int = 0,
    fmt: str = "rec",
    first_identity: int = 0,
    workers: Optional[int] = None,
    overwrite: bool = False,
    first_image: int = 0,
) -> str:
    """Write `identities` x `per_identity` images of identities first_identity.. into `out`; returns `out`.

    Each identity's images are its numbers first_image.. (an image is the same whichever call renders it):
    first_image = the per_identity of a training set gives new photos of the same people.

    fmt "rec": out/train.rec, train.idx, property in insightface's layout: record 0 is the header
    (flag 2, label = [first identity-record key, end]), images at keys 1..K with the identity id
    as scalar label, then one record per identity (label = [first, last+1) image keys, no image).
    fmt "folder": out/<identity, 6 digits>/<n, 4 digits>.jpg.
    A dataset already in `out` (those files, or identity folders) is refused unless `overwrite`, which
    removes it first; another job writing `out` is refused (common.files.OutputLockedError).
    """
    _check_counts(identities, per_identity, first_identity)
    if first_image < 0:
        raise SynthError(f"first_image must be >= 0, found {first_image}")
    if fmt not in FORMATS:
        raise SynthError(f"fmt must be one of {FORMATS}, found {fmt!r}")
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise SynthError(f"{out}: output path exists and is not a directory")
    with output_lock(out, f"python -m convert synth {out} --format {fmt}"):
        _clear_previous(out, fmt, overwrite)
        ids = range(first_identity, first_identity + identities)
        stream = _identity_images(
            seed, [(i, range(first_image, first_image + per_identity)) for i in ids], workers, f"synth {fmt}", identities * per_identity
        )
        if fmt == "folder":
            for identity, jpegs in zip(ids, stream):
                folder = os.path.join(out, f"{identity:06d}")
                os.makedirs(folder, exist_ok=True)
                for n, jpeg in enumerate(jpegs, start=first_image):
                    write_atomic(os.path.join(folder, f"{n:04d}.jpg"), jpeg)
            return out

        # Renamed into place last, .idx before .rec: a train.rec under its final name is complete.
        rec, idx = atomic_path(os.path.join(out, "train.rec")), atomic_path(os.path.join(out, "train.idx"))
        with rec as tmp_rec, idx as tmp_idx:
            with RecordWriter(tmp_rec, tmp_idx) as writer:
                _write_insightface_records(writer, ids, stream, per_identity)
            write_atomic(os.path.join(out, "property"), f"{identities},112,112")
    return out


def _clear_previous(out: str, fmt: str, overwrite: bool) -> None:
    """Refuse (or with `overwrite`, remove) the dataset files of format `fmt` already in `out`: a .rec folder's
    train.rec/train.idx/property, or identity folders, where images of another run would mix with these."""
    if fmt == "rec":
        found = [name for name in REC_FILES if os.path.lexists(os.path.join(out, name))]
    else:
        found = sorted(e.name for e in os.scandir(out) if e.is_dir() and _IDENTITY_FOLDER.fullmatch(e.name))
    if not found:
        return
    if not overwrite:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise SynthError(f"{out}: already holds a synthetic dataset ({shown}); pass --overwrite to replace it")
    for name in found:
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def _write_insightface_records(writer: RecordWriter, ids: range, stream: Iterator[list], per_identity: int) -> None:
    """Record 0 the header, the images at keys 1..K (identity as label), then one record per identity."""
    identities = len(ids)
    first_id_key = identities * per_identity + 1
    writer.write_idx(0, pack(IRHeader(2, (float(first_id_key), float(first_id_key + identities)), 0, 0), b""))
    key = 1
    for identity, jpegs in zip(ids, stream):
        for jpeg in jpegs:
            writer.write_idx(key, pack(IRHeader(0, float(identity), key, 0), jpeg))
            key += 1
    for i in range(identities):
        start = 1 + i * per_identity
        rng = (float(start), float(start + per_identity))
        writer.write_idx(first_id_key + i, pack(IRHeader(2, rng, first_id_key + i, 0), b""))


def write_pairs_bin(
    path: Union[str, os.PathLike],
    identities: int,
    per_identity_images: int,
    pairs: int,
    seed: int = 0,
    first_identity: int = 0,
    workers: Optional[int] = None,
) -> str:
    """Write a verification set in insightface's .bin format: pickle of (bins, issame_list).

    bins holds 2 * pairs JPEG byte strings (pair i is bins[2i], bins[2i+1]); the first
    ceil(pairs / 2) drawn pairs are same-identity, the rest different, then the pair order is
    shuffled. Images are those of identities first_identity.. (use ids the training set lacks).
    """
    _check_counts(identities, per_identity_images, first_identity)
    if pairs < 1:
        raise SynthError(f"pairs must be >= 1, found {pairs}")
    if identities < 2:
        raise SynthError(f"a pair set needs >= 2 identities for different-identity pairs, found {identities}")
    if per_identity_images < 2:
        raise SynthError(f"same-identity pairs need >= 2 images per identity, found {per_identity_images}")
    rng = np.random.default_rng([seed, _PAIR_STREAM, first_identity, identities, per_identity_images])
    chosen = _draw_pairs(rng, pairs, identities, per_identity_images)
    jpeg_of = _pair_images(chosen, seed, first_identity, workers)
    bins, issame = [], []
    for first, second, same in chosen:
        bins += [jpeg_of[first], jpeg_of[second]]
        issame.append(bool(same))
    return write_bin(path, bins, issame)


def _draw_pairs(rng: np.random.Generator, pairs: int, identities: int, per_identity_images: int) -> list:
    """The pairs, shuffled, as ((identity offset, image n), (identity offset, image n), same): the first
    ceil(pairs / 2) drawn are same-identity."""
    n_same = (pairs + 1) // 2
    chosen = []  # (identity offset, image n) x 2 per pair
    for p in range(pairs):
        if p < n_same:
            a = b = int(rng.integers(identities))
            na, nb = (int(k) for k in rng.choice(per_identity_images, size=2, replace=False))
        else:
            a, b = (int(k) for k in rng.choice(identities, size=2, replace=False))
            na, nb = (int(k) for k in rng.integers(per_identity_images, size=2))
        chosen.append(((a, na), (b, nb), p < n_same))
    order = rng.permutation(pairs)
    return [chosen[i] for i in order]


def _pair_images(chosen: list, seed: int, first_identity: int, workers: Optional[int]) -> dict:
    """(identity offset, image n) -> JPEG bytes of every image the pairs use, each rendered once."""
    needed: dict = {}
    for (a, na), (b, nb), _ in chosen:
        needed.setdefault(a, set()).add(na)
        needed.setdefault(b, set()).add(nb)
    tasks = [(first_identity + i, sorted(needed[i])) for i in sorted(needed)]
    jpeg_of = {}
    total = sum(len(n) for _, n in tasks)
    for (identity, images), jpegs in zip(tasks, _identity_images(seed, tasks, workers, "synth pairs", total)):
        for n, jpeg in zip(images, jpegs):
            jpeg_of[(identity - first_identity, n)] = jpeg
    return jpeg_of


def write_bin(path: Union[str, os.PathLike], bins: Sequence[bytes], issame: Sequence[bool]) -> str:
    """insightface's .bin at `path`, atomically: a pickle of (list of encoded images, list of bools), pair i
    = bins[2i], bins[2i+1]; what insightface's load_bin and evaluate.verification.load_bin read."""
    if len(bins) != 2 * len(issame):
        raise ValueError(f"expected 2 images per pair = {2 * len(issame)}, found {len(bins)}")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomic(path, pickle.dumps(([bytes(b) for b in bins], [bool(x) for x in issame]),
                                    protocol=pickle.HIGHEST_PROTOCOL))
    return path
