"""The benchmark's data: one .rec and its JPEG and raw-encoded shards, made once and kept in a cache.

`--data DIR` names a .rec (a folder with train.rec/train.idx, or the .rec file) or a shards directory
(manifest.json); without it, the synthetic identity set of `--images` images is generated. Whatever is
missing of the three forms is derived through the project's own converters (a .rec from JPEG shards is
written with convert.recordio), so every stage reads the very same images.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from bench.settings import BenchError
from convert.manifest import MANIFEST_NAME

PER_IDENTITY = 50  # synthetic images per identity (MS1MV2 averages ~100; smaller keeps --quick sets many-classed)


@dataclass(frozen=True)
class BenchData:
    """The same images three ways. mean_image_bytes: mean encoded (JPEG) image size in the shards."""

    source: str
    rec: Path
    idx: Path
    jpeg_shards: Path
    raw_shards: Path
    images: int
    classes: int
    image_size: int
    rec_bytes: int
    mean_image_bytes: float

    def describe(self) -> dict:
        return {"source": self.source, "images": self.images, "classes": self.classes,
                "image_size": self.image_size, "rec_bytes": self.rec_bytes,
                "mean_image_bytes": round(self.mean_image_bytes, 1), "rec": str(self.rec),
                "jpeg_shards": str(self.jpeg_shards), "raw_shards": str(self.raw_shards)}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "adadistill" / "bench"


def prepare(data: Optional[Path], images: int, cache_dir: Path, progress: bool = True) -> BenchData:
    """Find or make the .rec, JPEG shards and raw shards; returns where they are and what they hold."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    if data is None:
        rec, idx, work, source = _synthetic(cache_dir, images, progress)
        jpeg = work / "shards-jpeg"
    elif (data / MANIFEST_NAME).is_file():
        jpeg, source = data, f"shards {data}"
        work = cache_dir / f"shards-{_fingerprint(data / MANIFEST_NAME)}"
        rec, idx = _rec_from_shards(jpeg, work / "rec", progress)
    else:
        rec, idx = _rec_paths(data)
        work, source = cache_dir / f"rec-{_fingerprint(rec)}", f"rec {rec}"
        jpeg = work / "shards-jpeg"
    from convert import convert_rec  # the converter is also what the convert stage measures

    if jpeg != data:
        convert_rec(rec, jpeg, progress=progress)
    raw = work / "shards-raw"
    convert_rec(rec, raw, encoding="raw", progress=progress)
    return _describe(source, rec, idx, jpeg, raw)


def _synthetic(cache_dir: Path, images: int, progress: bool) -> tuple:
    from convert.synthetic import write_synthetic

    if images < 1:
        raise BenchError(f"--images: expected >= 1, found {images}")
    per = min(PER_IDENTITY, images)
    identities = max(1, images // per)
    work = cache_dir / f"synth-{identities}x{per}-seed0"
    rec_dir = work / "rec"
    rec, idx = rec_dir / "train.rec", rec_dir / "train.idx"
    if not (rec.is_file() and idx.is_file()):  # write_synthetic renames both into place when complete
        if progress:
            print(f"bench: generating {identities * per} synthetic images into {rec_dir} (once; cached)")
        # overwrite: the cache's own folder, where a killed run may have left train.idx without train.rec
        write_synthetic(rec_dir, identities, per, seed=0, fmt="rec", overwrite=True)
    return rec, idx, work, f"synthetic: {identities} identities x {per} images, seed 0"


def _rec_paths(data: Path) -> tuple:
    if data.is_dir():
        rec, idx = data / "train.rec", data / "train.idx"
    elif data.suffix == ".rec" and data.is_file():
        rec, idx = data, data.with_suffix(".idx")
    else:
        raise BenchError(f"--data {data}: expected a shards directory (manifest.json), a folder with "
                         f"train.rec/train.idx, or a .rec file")
    for path in (rec, idx):
        if not path.is_file():
            raise BenchError(f"--data {data}: {path} is missing (the baseline reads the .rec by its .idx, as "
                             f"insightface does)")
    return rec, idx


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:12]


def _rec_from_shards(shards: Path, rec_dir: Path, progress: bool) -> tuple:
    """An im2rec-layout .rec (key = shard key, label = contiguous class) of JPEG shards' images."""
    from common.files import atomic_path
    from convert.recordio import IRHeader, RecordWriter, pack
    import pipeline

    rec, idx = rec_dir / "train.rec", rec_dir / "train.idx"
    if rec.is_file() and idx.is_file():
        return rec, idx
    samples = pipeline.ShardSamples(shards)
    if samples.encoding != "jpeg":
        raise BenchError(f"--data {shards}: shards hold {samples.encoding!r} images; the benchmark needs JPEG "
                         f"shards (or the .rec), since its baselines decode JPEG")
    # .idx renamed into place before .rec: a train.rec under its final name is complete.
    with atomic_path(rec) as tmp_rec, atomic_path(idx) as tmp_idx, RecordWriter(tmp_rec, tmp_idx) as writer:
        for start in tqdm(range(0, samples.num_samples, 1024), desc="bench: .rec from shards", unit="chunk",
                          disable=not progress):
            keys = np.arange(start, min(start + 1024, samples.num_samples))
            for key, view, label in zip(keys.tolist(), samples.encoded(keys), samples.labels(keys).tolist()):
                writer.write_idx(key, pack(IRHeader(0, float(label), key, 0), view.tobytes()))
    return rec, idx


def _describe(source: str, rec: Path, idx: Path, jpeg: Path, raw: Path) -> BenchData:
    import pipeline

    samples = pipeline.ShardSamples(jpeg)
    if samples.encoding != "jpeg":
        raise BenchError(f"{jpeg}: expected JPEG shards, found {samples.encoding!r}")
    return BenchData(source=source, rec=rec, idx=idx, jpeg_shards=jpeg, raw_shards=raw, images=samples.num_samples,
                     classes=samples.num_classes, image_size=samples.image_size, rec_bytes=rec.stat().st_size,
                     mean_image_bytes=samples.mean_member_bytes)
