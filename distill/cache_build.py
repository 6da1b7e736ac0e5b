"""`python -m distill cache-teacher`: run the teacher once over every sample, plain and mirrored.

Every sample exactly once, in index order: the training loader's epochs are shuffled and drop a tail,
so the pass reads the samples by key through the shards' index and decodes them with
`pipeline.decode_images` (the same DALI decoder and normalisation as training; raw shards are only
normalised). The mirrored view is `images.flip(3)`: DALI's mirror in training is the same exact
permutation of pixels. The teacher runs at the precision the training loop's online teacher would use
(`--precision auto`: bf16 autocast on CUDA, fp32 on the CPU, as `train.precision: auto`), recorded in
the manifest; the cache stores float16.

Work is cut into chunks of `--chunk` samples (the unit of resume). Under torchrun the chunks still to do
are split into one contiguous run per rank; each rank writes its rows of the shared memory-mapped file
and, after each chunk, its own progress file (atomically); after a barrier rank 0 folds the progress
into manifest.json. A re-run skips every chunk already done.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

import pipeline
from distill import distributed
from distill import teacher as teachers
from distill.teacher_cache import (EMBEDDINGS, LABELS, MIRRORED, PLAIN, CacheManifest, TeacherCacheError,
                                   merge_ranges, open_embeddings, shards_sha256, weights_sha256)
from pipeline.loader import open_index
from pipeline.shard_index import ShardReader

_PROGRESS = "progress-rank{}.json"


def main(argv: Optional[Sequence[str]] = None) -> CacheManifest:
    args = _parse_args(argv)
    ctx = distributed.setup()
    try:
        device = ctx.device if args.device == "auto" else torch.device(args.device)
        return build(args.teacher, args.shards, args.out, network=args.network, batch_size=args.batch_size,
                     chunk=args.chunk, device=device, ctx=ctx, progress=not args.no_progress,
                     precision=args.precision)
    finally:
        distributed.teardown(ctx)


def build(teacher_spec: str, shards: str, out: str, *, network: Optional[str] = None, batch_size: int = 256,
          chunk: int = 4096, device: torch.device = torch.device("cpu"), ctx: distributed.DistContext,
          progress: bool = True, stop_after: Optional[int] = None, precision: str = "auto") -> CacheManifest:
    """Build or finish the cache at `out` for the teacher named by `teacher_spec`; returns its manifest.
    `stop_after` (tests) ends this rank's pass after that many chunks, as an interruption would."""
    net = teachers.load_network(teacher_spec, network=network)
    return build_with(net, str(teacher_spec), shards, out, batch_size=batch_size, chunk=chunk, device=device,
                      ctx=ctx, progress=progress, stop_after=stop_after, precision=precision)


def build_with(net: torch.nn.Module, teacher_spec: str, shards: str, out: str, *, batch_size: int = 256,
               chunk: int = 4096, device: torch.device = torch.device("cpu"), ctx: distributed.DistContext,
               progress: bool = True, stop_after: Optional[int] = None, precision: str = "auto") -> CacheManifest:
    """`build` for a teacher network already in hand (the benchmark's fresh one); `teacher_spec` is only
    recorded. The cache's identity is the hash of `net`'s weights."""
    if batch_size < 1 or chunk < 1:
        raise ValueError(f"--batch-size and --chunk: expected >= 1, found {batch_size}, {chunk}")
    index = open_index(shards)
    dtype = teachers.autocast_dtype(precision, device)
    # channels_last as the loop's default: faster here.
    source = teachers.TeacherSource(net, device=device, autocast_dtype=dtype, channels_last=True)
    dim = int(source.embed(torch.zeros(1, 3, index.image_size, index.image_size, device=device)).shape[1])
    wanted = CacheManifest(teacher_spec=teacher_spec, teacher_sha256=weights_sha256(source.network),
                           shards=str(shards), shards_sha256=shards_sha256(shards), num_samples=index.num_samples,
                           embedding_size=dim, chunk=chunk, precision=teachers.precision_name(dtype))
    cache = Path(out)
    if ctx.is_main:
        _prepare(cache, wanted)
    distributed.barrier(ctx)
    manifest = CacheManifest.load(cache)
    emb = open_embeddings(cache, manifest, mode="r+")
    labels = np.load(cache / LABELS, mmap_mode="r+")
    todo = [c for c in _chunks(manifest) if not _covered(c, manifest.done)]
    mine = [tuple(c) for c in np.array_split(np.array(todo, dtype=np.int64).reshape(-1, 2), ctx.world_size)[ctx.rank]]
    reader = ShardReader(index)
    done: list[tuple[int, int]] = []
    bar = tqdm(total=sum(b - a for a, b in mine), unit="img", desc=f"teacher cache (rank {ctx.rank})",
               disable=not (progress and ctx.is_main))
    for start, stop in mine:
        if stop_after is not None and len(done) >= stop_after:
            break
        keys = np.arange(start, stop, dtype=np.int64)
        emb[start:stop, PLAIN], emb[start:stop, MIRRORED] = _embed(source, reader, index, keys, batch_size, device)
        labels[start:stop] = reader.labels(keys)
        emb.flush(), labels.flush()  # the rows are on disk before the progress file says so
        done.append((start, stop))
        _atomic_json(cache / _PROGRESS.format(ctx.rank), {"done": merge_ranges(done)})
        bar.update(stop - start)
    bar.close()
    if stop_after is not None:
        return manifest
    distributed.barrier(ctx)
    if ctx.is_main:
        manifest = _fold_progress(cache, CacheManifest.load(cache))
    distributed.barrier(ctx)
    return CacheManifest.load(cache)


@torch.no_grad()
def _embed(source: teachers.TeacherSource, reader: ShardReader, index, keys: np.ndarray, batch_size: int,
           device: torch.device):
    """float16 [n, D] plain and mirrored teacher embeddings of the samples `keys`."""
    views = reader.images(keys)
    if index.encoding == "raw":  # HWC uint8 pixels: nothing to decode
        images = torch.from_numpy(np.stack(views)).to(device).permute(0, 3, 1, 2).float().sub_(127.5).div_(127.5)
    else:
        images = pipeline.decode_images(views, size=index.image_size, device=device, batch_size=batch_size)
    plain, mirrored = [], []
    for x in images.split(batch_size):
        plain.append(source.embed(x).cpu())
        mirrored.append(source.embed(x.flip(3)).cpu())
    return torch.cat(plain).half().numpy(), torch.cat(mirrored).half().numpy()


def _prepare(cache: Path, wanted: CacheManifest) -> None:
    """Rank 0: start a new cache, or check that the one there is the same job and fold in its progress."""
    if (cache / "manifest.json").is_file():
        have = CacheManifest.load(cache)
        # The chunk size is not identity: a resumed cache keeps the one it was started with.
        for key in ("teacher_sha256", "shards_sha256", "num_samples", "embedding_size", "precision"):
            if getattr(have, key) != getattr(wanted, key):
                raise TeacherCacheError(f"{cache}: holds a cache with {key}={getattr(have, key)!r}, this run would "
                                        f"write {key}={getattr(wanted, key)!r}; use another --out or delete it")
        _fold_progress(cache, have)
        return
    cache.mkdir(parents=True, exist_ok=True)
    np.lib.format.open_memmap(cache / EMBEDDINGS, mode="w+", dtype=np.float16, shape=wanted.shape).flush()
    np.lib.format.open_memmap(cache / LABELS, mode="w+", dtype=np.int64, shape=(wanted.num_samples,)).flush()
    wanted.save(cache)  # written last: a manifest means the files it describes exist


def _fold_progress(cache: Path, manifest: CacheManifest) -> CacheManifest:
    ranges = list(manifest.done)
    files = sorted(cache.glob(_PROGRESS.format("*")))
    for path in files:
        try:
            ranges += [tuple(r) for r in json.loads(path.read_text())["done"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TeacherCacheError(f"{path}: unreadable progress file ({e}); delete it to redo its chunks") from e
    done = merge_ranges(ranges)
    folded = CacheManifest(**{**manifest.__dict__, "done": done, "complete": done == ((0, manifest.num_samples),)})
    folded.save(cache)
    for path in files:
        path.unlink()
    return folded


def _chunks(manifest: CacheManifest) -> list[tuple[int, int]]:
    n, c = manifest.num_samples, manifest.chunk
    return [(a, min(a + c, n)) for a in range(0, n, c)]


def _covered(chunk: tuple[int, int], done: tuple[tuple[int, int], ...]) -> bool:
    return any(a <= chunk[0] and chunk[1] <= b for a, b in done)


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m distill cache-teacher", description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="teacher spec: hf:<repo>, a file or directory, a run dir")
    parser.add_argument("--network", default=None, help="backbone name for a bare state dict (arcface_torch .pth)")
    parser.add_argument("--shards", required=True, help="a directory written by `python -m convert`")
    parser.add_argument("--out", required=True, help="the cache directory (created; an existing one is resumed)")
    parser.add_argument("--batch-size", type=int, default=256, help="teacher batch size (default 256)")
    parser.add_argument("--chunk", type=int, default=4096,
                        help="samples per resume unit (default 4096; a resumed cache keeps its own)")
    parser.add_argument("--device", default="auto", help="auto (the rank's GPU, else CPU), cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="the teacher's precision, as train.precision (auto: bf16 on CUDA, fp32 on the CPU); "
                             "recorded in the manifest")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    for flag, value in (("--batch-size", args.batch_size), ("--chunk", args.chunk)):
        if value < 1:
            parser.error(f"{flag}: expected >= 1, found {value}")
    return args
