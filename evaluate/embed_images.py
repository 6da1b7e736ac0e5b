"""Embeddings of every image of a source (evaluate.image_sources) into a Parquet file, as the evaluation makes them.

Images go through the evaluation's own image pass: pipeline.decode_batches (resized to 112x112 where they
are not), the backbone and its flip, fused = e(x) + e(flip(x)) (evaluate.embed.embed_batches; flip=False
for the single pass), in the evaluation's batch size. Raw-encoded shards are only normalised, as
ShardSamples gives them to training.

The Parquet file (pyarrow, written atomically) has one row per image, in the source's order:
`key` (string: its path below the folder, file name, record key, sample key or position in a .bin),
`label` (int64, null where the source has none), `identity` (string: the identity folder's name, else null),
`embedding` (fixed_size_list<float32>[D], the fused embedding, not normalised) and `norm` (float32, its L2
norm). The schema's metadata says which model, source and pass made it.

An image that does not decode stops the run with its path and position; with skip_bad it is left out and
listed (position, key, path, reason) in skipped.csv beside the output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from common.files import atomic_path
import pipeline
from evaluate.embed import DECODE_BATCHES_PER_CALL, embed_batches, pass_device
from evaluate.image_sources import ImageSource
from evaluate.landmarks import LandmarksError, aligned_png
from evaluate.report import write_csv
from pipeline.image_check import header_problem

SKIPPED_NAME = "skipped.csv"


@dataclass(frozen=True)
class Embedded:
    kept: np.ndarray  # int64 [M]: the source positions embedded, in order
    fused: np.ndarray  # float32 [M, D]
    skipped: tuple  # ((position, reason), ...)


def _undecodable(source: ImageSource, i: int, reason: str) -> pipeline.UndecodableImageError:
    return pipeline.UndecodableImageError(f"{source.name(i)}: image {i} of {len(source)} does not decode ({reason}); "
                                          f"--skip-bad leaves such images out", item=i, reason=reason)


def _chunk_images(source: ImageSource, idx: list, landmarks: Optional[np.ndarray], skip_bad: bool,
                  skipped: list) -> tuple[list, list]:
    """(positions, stored bytes) of a chunk, aligned where there are landmarks, without the images whose
    header already says they will not decode."""
    keep, data = [], []
    for i, item in zip(idx, source.read(idx)):
        problem = None
        if landmarks is not None:
            try:
                item = aligned_png(item, landmarks[i], source.name(i))
            except LandmarksError as err:
                if not skip_bad:
                    raise
                problem = str(err)
        elif source.raw_size is None:
            problem = header_problem(item)
        if problem is not None:
            if not skip_bad:
                raise _undecodable(source, i, problem)
            skipped.append((i, problem))
            continue
        keep.append(i)
        data.append(item)
    return keep, data


def _raw_batches(data: list, size: int, device: torch.device, batch_size: int) -> Iterator[torch.Tensor]:
    """Raw shards' HWC pixels normalised as training sees them (pipeline.ShardSamples.image_batches)."""
    for s in range(0, len(data), batch_size):
        pixels = torch.from_numpy(np.stack([np.asarray(d).reshape(size, size, 3) for d in data[s:s + batch_size]]))
        yield pixels.to(device).permute(0, 3, 1, 2).float().sub_(127.5).div_(127.5)


def _counted(batches: Iterator[torch.Tensor], bar: tqdm) -> Iterator[torch.Tensor]:
    """`batches`, moving the run's bar as each is embedded (not a chunk at a time)."""
    for b in batches:
        bar.update(b.shape[0])
        yield b


def embed_source(model: torch.nn.Module, source: ImageSource, *, device=None, batch_size: int = 256,
                 flip: bool = True, skip_bad: bool = False, landmarks: Optional[np.ndarray] = None,
                 progress: bool = True) -> Embedded:
    """Every image of `source` through the image pass (see the module docstring). landmarks: float32
    [N, 5, 2] in the source's order (evaluate.landmarks.match), or None for images already aligned."""
    dev = pass_device(model, device)
    raw = source.raw_size is not None and landmarks is None
    step = batch_size * DECODE_BATCHES_PER_CALL
    kept, parts, skipped = [], [], []
    bar = tqdm(total=len(source), desc="embed", unit="img", disable=not progress)
    try:
        for s in range(0, len(source), step):
            idx, data = _chunk_images(source, list(range(s, min(s + step, len(source)))), landmarks, skip_bad, skipped)
            while data:  # again without the culprit, each time DALI refuses an image whose header parsed
                done = bar.n
                batches = (_raw_batches(data, source.raw_size, dev, batch_size) if raw else
                           pipeline.decode_batches(data, size=112, device=dev, batch_size=batch_size))
                try:
                    emb = embed_batches(model, _counted(batches, bar), total=len(data), flip=flip)
                except pipeline.UndecodableImageError as err:
                    if err.item is None:  # DALI refused a batch and Pillow decodes each image of it
                        raise pipeline.UndecodableImageError(
                            f"{source.path}: images {idx[0]}..{idx[-1]} of {len(source)}: {err.reason}",
                            reason=err.reason) from err
                    if not skip_bad:
                        raise _undecodable(source, idx[err.item], err.reason) from err
                    skipped.append((idx[err.item], err.reason))
                    del idx[err.item], data[err.item]
                    bar.n = done
                    continue
                kept += idx
                parts.append(emb.fused.astype(np.float32, copy=False))
                break
            bar.update(min(s + step, len(source)) - bar.n)  # the chunk's skipped images count as done
    finally:
        bar.close()
    if not parts:
        raise pipeline.UndecodableImageError(f"{source.path}: none of its {len(source)} images decodes "
                                             f"(see {SKIPPED_NAME})")
    return Embedded(np.asarray(kept, dtype=np.int64), np.concatenate(parts), tuple(sorted(skipped)))


def table(source: ImageSource, embedded: Embedded, metadata: dict) -> pa.Table:
    """The Parquet table (see the module docstring); `metadata` goes into the schema as JSON."""
    rows = embedded.kept
    dim = embedded.fused.shape[1]
    flat = pa.array(np.ascontiguousarray(embedded.fused, dtype=np.float32).reshape(-1), type=pa.float32())
    columns = {
        "key": pa.array([source.keys[i] for i in rows], type=pa.string()),
        "label": pa.array(source.labels[rows] if source.labels is not None else [None] * len(rows), type=pa.int64()),
        "identity": pa.array([source.identities[i] for i in rows] if source.identities is not None
                             else [None] * len(rows), type=pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        "norm": pa.array(np.linalg.norm(embedded.fused.astype(np.float64), axis=1).astype(np.float32)),
    }
    t = pa.table(columns)
    return t.replace_schema_metadata({"adadistill": json.dumps(metadata)})


def write_parquet(path: str | Path, t: pa.Table) -> None:
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(t, tmp)


def write_skipped(path: str | Path, source: ImageSource, skipped) -> None:
    """position, key, path, reason: one row per image left out."""
    write_csv(path, ({"position": i, "key": source.keys[i], "path": source.name(i), "reason": reason}
                     for i, reason in skipped), ("position", "key", "path", "reason"))
