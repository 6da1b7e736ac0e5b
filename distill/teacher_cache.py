"""The teacher embedding cache: its format on disk, its build, and its reading by the training loop.

With the flip as the only augmentation, a sample's teacher embedding takes one of two values: that of
the image (view 0) or of its mirror (view 1). `build` (`python -m distill cache-teacher`) computes both
once; the loop's `CachedTeacher` then reads them by `batch.index` and `batch.flipped`.

Layout of a cache directory:
  embeddings.npy  float16 [num_samples, 2, D], raw (unnormalised) teacher outputs, row = global sample
                  index; a plain .npy, memory-mapped with numpy (np.lib.format.open_memmap).
  labels.npy      int64 [num_samples], each sample's label (for the class means).
  manifest.json   format, teacher spec, teacher_sha256 (of its weights), shards_sha256 (of the shards'
                  manifest.json; for several directories laid end to end, of their manifests' sha256s in
                  order: see `shards_sha256`), dtype, shape, chunk size, done ([start, stop) ranges), complete, and
                  precision: the teacher's compute precision (fp32, or bf16 autocast as the online
                  teacher runs on CUDA); a manifest without it (written before it was recorded) does not
                  load: the cache is built again.

Which hash proves the teacher: the sha256 of the teacher's state dict (see `weights_sha256`), not of a
file. A spec may be a hub id, a directory or a run directory whose `latest` moves; the weights are what
the embeddings came from. Checking it costs one load of the teacher on the CPU at start-up (~1 s for an
IR50), which is cheap next to a training run and never wrong about a renamed or re-saved file.

Rows are the global keys of `data.shards`: for several directories, the keys of their union
(pipeline/datasets.py), so one cache serves a run over all of them, whatever its data.weights.

The build reads every sample exactly once, in key order (the training loader's epochs are shuffled and
drop a tail), through `pipeline.ShardSamples` (the training decoder and normalisation). The mirrored
view is `images.flip(3)`: DALI's mirror in training is the same exact permutation of pixels. Work is cut
into chunks of `chunk` samples (the unit of resume). Under torchrun the chunks still to do are split into
one contiguous run per rank; each rank writes its rows of the shared memory-mapped file and, after each
chunk, its own progress file (atomically); after a barrier rank 0 folds the progress into manifest.json.
A re-run skips every chunk already done.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Protocol, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from common.errors import InputError
from common.files import write_atomic
import pipeline
from distill import distributed

FORMAT = "adadistill-teacher-cache"
VERSION = 1
EMBEDDINGS = "embeddings.npy"
LABELS = "labels.npy"                            # int64 [num_samples]: for class means
MANIFEST = "manifest.json"
PLAIN, MIRRORED = 0, 1
_PROGRESS = "progress-rank{}.json"


class TeacherCacheError(InputError, ValueError):
    """A cache that is missing, incomplete, or does not belong to the configured teacher and shards."""


def weights_sha256(network: nn.Module) -> str:
    """sha256 over the state dict in sorted key order: key, dtype, shape and the tensor's bytes.

    Buffers count (BatchNorm statistics shape the output); the hash does not depend on the file format,
    the device or the order in which a checkpoint happened to store its tensors."""
    h = hashlib.sha256()
    state = network.state_dict()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes of any dtype, 0-d included
    return h.hexdigest()


def shards_sha256(shards: pipeline.Shards) -> str:
    """sha256 of the shards' manifest.json: it names every shard with its own sha256, so it names the data.
    For several directories (laid end to end in that order), the sha256 of their manifests' sha256s, one
    hex digest a line in order: the order is the keys' and classes' layout, so it is part of the identity.
    One directory, or a list of one, keeps the manifest's own sha256 (caches built before unions stay valid)."""
    digests = []
    for d in pipeline.shard_dirs(shards):
        path = Path(d) / "manifest.json"
        try:
            digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
        except OSError as e:
            raise TeacherCacheError(f"{path}: cannot read the shards' manifest ({e})") from e
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(f"{h}\n" for h in digests).encode()).hexdigest()


def shards_text(shards: pipeline.Shards) -> str:
    """The directories as the manifest records them: the path, or the paths joined by ", " in order."""
    return ", ".join(pipeline.shard_dirs(shards))


@dataclass(frozen=True)
class CacheManifest:
    teacher_spec: str
    teacher_sha256: str
    shards: str                                   # recorded only: the directory, or several joined by ", "
    shards_sha256: str
    num_samples: int
    embedding_size: int
    chunk: int                                    # samples per resume unit
    done: tuple[tuple[int, int], ...] = ()        # merged [start, stop) ranges written so far
    precision: str = field(kw_only=True)          # the teacher's precision when the cache was built (fp32, bf16)
    complete: bool = False
    dtype: str = "float16"
    format: str = FORMAT
    version: int = VERSION
    shape: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.embedding_size < 1 or self.chunk < 1:
            raise TeacherCacheError(f"cache manifest: expected num_samples, embedding_size and chunk >= 1, found "
                                    f"{self.num_samples}, {self.embedding_size}, {self.chunk}")
        object.__setattr__(self, "shape", (self.num_samples, 2, self.embedding_size))
        object.__setattr__(self, "done", merge_ranges(self.done))

    @classmethod
    def load(cls, cache: Union[str, os.PathLike]) -> "CacheManifest":
        path = Path(cache) / MANIFEST
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise TeacherCacheError(f"{path}: cannot read a teacher cache manifest ({e}); build the cache with "
                                    f"`python -m distill cache-teacher`") from e
        if raw.get("format") != FORMAT or raw.get("version") != VERSION:
            raise TeacherCacheError(f"{path}: expected format {FORMAT!r} version {VERSION}, found "
                                    f"{raw.get('format')!r} version {raw.get('version')!r}")
        if "precision" not in raw:
            raise TeacherCacheError(f"{path}: records no precision (a cache built before it was recorded); build "
                                    f"it again with `python -m distill cache-teacher`")
        try:
            shape = tuple(raw.pop("shape"))
            made = cls(**{**raw, "done": tuple(tuple(r) for r in raw.get("done", ()))})
        except (KeyError, TypeError) as e:
            raise TeacherCacheError(f"{path}: malformed manifest ({e})") from e
        if shape != made.shape or made.dtype != "float16":
            raise TeacherCacheError(f"{path}: shape {shape} / dtype {made.dtype} do not match num_samples "
                                    f"{made.num_samples}, embedding_size {made.embedding_size}, float16")
        return made

    def save(self, cache: Union[str, os.PathLike]) -> None:
        """Atomic: a reader sees the old manifest or the new one, never half of one."""
        write_atomic(Path(cache) / MANIFEST, json.dumps(asdict(self), indent=1) + "\n")


def merge_ranges(ranges) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for start, stop in sorted((int(a), int(b)) for a, b in ranges if int(b) > int(a)):
        if out and start <= out[-1][1]:
            out[-1][1] = max(out[-1][1], stop)
        else:
            out.append([start, stop])
    return tuple((a, b) for a, b in out)


def open_embeddings(cache: Union[str, os.PathLike], manifest: CacheManifest, mode: str = "r") -> np.ndarray:
    path = Path(cache) / EMBEDDINGS
    try:
        arr = np.load(path, mmap_mode=mode)
    except (OSError, ValueError) as e:
        raise TeacherCacheError(f"{path}: cannot memory-map the embeddings ({e})") from e
    if arr.shape != manifest.shape or arr.dtype != np.float16:
        raise TeacherCacheError(f"{path}: expected float16 {manifest.shape}, found {arr.dtype} {arr.shape}")
    return arr


def check_matches(cache: Union[str, os.PathLike], manifest: CacheManifest, *, teacher_sha256: str,
                  teacher_spec: str, shards: pipeline.Shards) -> None:
    """Refuse a cache that is incomplete or was built from other shards or another teacher."""
    where = Path(cache) / MANIFEST
    if not manifest.complete:
        raise TeacherCacheError(f"{where}: the cache is incomplete (done: {list(manifest.done)} of "
                                f"{manifest.num_samples} samples); re-run `python -m distill cache-teacher` "
                                "to finish it")
    found = shards_sha256(shards)
    if found != manifest.shards_sha256:
        raise TeacherCacheError(
            f"{where}: built from shards {manifest.shards!r} whose manifest.json has sha256 {manifest.shards_sha256}, "
            f"but data.shards={shards_text(shards)!r} has {found}; rebuild the cache for these shards")
    if teacher_sha256 != manifest.teacher_sha256:
        raise TeacherCacheError(
            f"{where}: built from teacher {manifest.teacher_spec!r} with weights sha256 {manifest.teacher_sha256}, "
            f"but teacher.spec={teacher_spec!r} has weights sha256 {teacher_sha256}; rebuild the cache with this "
            f"teacher or set teacher.spec to the one it was built from")


# --- building the cache -------------------------------------------------------------------------

class OnlineTeacher(Protocol):
    """What the build runs: distill.teacher.TeacherSource (the loop's online teacher) or the like."""

    network: nn.Module  # its weights are the cache's identity
    precision: str      # "fp32" or "bf16": recorded in the manifest

    def embed(self, images: torch.Tensor) -> torch.Tensor: ...


def build(teacher: OnlineTeacher, teacher_spec: str, shards: pipeline.Shards, out: Union[str, os.PathLike], *,
          ctx: distributed.DistContext, device: torch.device, batch_size: int = 256, chunk: int = 4096,
          progress: bool = True, stop_after: Optional[int] = None) -> CacheManifest:
    """Build or finish the cache at `out` with `teacher` (spec `teacher_spec`, recorded only; the hash of
    its weights is the cache's identity); returns its manifest. `shards`: a directory, or a list of them
    (one cache over their union, rows = its global keys). `stop_after` (tests) ends this rank's pass after
    that many chunks, as an interruption would."""
    if batch_size < 1 or chunk < 1:
        raise ValueError(f"--batch-size and --chunk: expected >= 1, found {batch_size}, {chunk}")
    samples = pipeline.ShardSamples(shards)
    dim = int(teacher.embed(torch.zeros(1, 3, samples.image_size, samples.image_size, device=device)).shape[1])
    wanted = CacheManifest(teacher_spec=teacher_spec, teacher_sha256=weights_sha256(teacher.network),
                           shards=shards_text(shards), shards_sha256=shards_sha256(shards), num_samples=samples.num_samples,
                           embedding_size=dim, chunk=chunk, precision=teacher.precision)
    cache = Path(out)
    if ctx.is_main:
        _prepare(cache, wanted)
    distributed.barrier(ctx)
    manifest = CacheManifest.load(cache)
    emb = open_embeddings(cache, manifest, mode="r+")
    labels = np.load(cache / LABELS, mmap_mode="r+")
    todo = [c for c in _chunks(manifest) if not _covered(c, manifest.done)]
    mine = [tuple(c) for c in np.array_split(np.array(todo, dtype=np.int64).reshape(-1, 2), ctx.world_size)[ctx.rank]]
    done: list[tuple[int, int]] = []
    bar = tqdm(total=sum(b - a for a, b in mine), unit="img", desc=f"teacher cache (rank {ctx.rank})",
               disable=not (progress and ctx.is_main))
    for start, stop in mine:
        if stop_after is not None and len(done) >= stop_after:
            break
        keys = np.arange(start, stop, dtype=np.int64)
        emb[start:stop, PLAIN], emb[start:stop, MIRRORED] = _embed(teacher, samples, keys, batch_size, device)
        labels[start:stop] = samples.labels(keys)
        emb.flush(), labels.flush()  # the rows are on disk before the progress file says so
        done.append((start, stop))
        write_atomic(cache / _PROGRESS.format(ctx.rank), json.dumps({"done": merge_ranges(done)}))
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
def _embed(teacher: OnlineTeacher, samples: pipeline.ShardSamples, keys: np.ndarray, batch_size: int,
           device: torch.device):
    """float16 [n, D] plain and mirrored teacher embeddings of the samples `keys`."""
    plain, mirrored = [], []
    for x in samples.image_batches(keys, device=device, batch_size=batch_size):  # DALI's batches, not joined
        plain.append(teacher.embed(x).cpu())
        mirrored.append(teacher.embed(x.flip(3)).cpu())
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


# --- reading it in the loop ---------------------------------------------------------------------

class CachedTeacher:
    """Stands in for distill.teacher.TeacherSource: `__call__(batch) -> [B, D]` float32 on the device,
    the cached view that matches each sample's flip. The batch must carry `flipped` (with_flip=True)."""

    def __init__(self, cache: Union[str, os.PathLike], manifest: CacheManifest, device: torch.device) -> None:
        self.path, self.manifest, self.device = Path(cache), manifest, device
        self.embeddings = open_embeddings(cache, manifest)

    def precision_note(self, online: str) -> str:
        """One line for the run's log: the precision the cache was built at against the online teacher's."""
        note = f"teacher cache {self.path}: built with the teacher at {self.manifest.precision}"
        if self.manifest.precision == online:
            return note + ", as the online teacher would run here"
        return (note + f"; the online teacher would run at {online} here (train.precision): the embeddings differ "
                f"by that rounding; rebuild with `cache-teacher --precision {online}` to match")

    def __call__(self, batch) -> torch.Tensor:
        if batch.flipped is None:
            raise TeacherCacheError("the teacher cache needs Batch.flipped: build the loader with with_flip=True")
        # The host's copies of the keys and flips (pipeline.Batch.keys, .flips; a batch with `flipped` has
        # `flips`): no device-to-host sync.
        rows = self.embeddings[batch.keys, batch.flips.astype(np.int64)]  # one gather from the memory map: [B, D] float16
        host = torch.from_numpy(rows)  # float16 across, widened on the device (exact): half the bytes copied
        if self.device.type == "cuda":
            host = host.pin_memory()  # an asynchronous copy needs pinned memory
        return host.to(self.device, non_blocking=True).float()


def plain_class_means(cache: Union[str, os.PathLike], manifest: CacheManifest, num_classes: int,
                      block: int = 65536, rows: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """[C, D] float32: per class, the mean of its samples' L2-normalised plain-view embeddings (the head
    mixes normalised teacher embeddings into its centres, so the centres start in that space). A class
    without samples keeps a zero row. `rows` = (start, stop): only those classes' means, [stop - start, D]
    (a sharded head's rank reads the whole cache but sums only its own classes)."""
    emb = open_embeddings(cache, manifest)
    labels = np.load(Path(cache) / LABELS, mmap_mode="r")
    if labels.shape != (manifest.num_samples,):
        raise TeacherCacheError(f"class means: expected {manifest.num_samples} labels, found {labels.shape}")
    first, stop = rows or (0, num_classes)
    sums = torch.zeros(stop - first, manifest.embedding_size, dtype=torch.float64)
    counts = torch.zeros(stop - first, dtype=torch.float64)
    for start in range(0, manifest.num_samples, block):
        lab = labels[start:start + block].astype(np.int64)
        mine = np.flatnonzero((lab >= first) & (lab < stop))
        f = torch.nn.functional.normalize(
            torch.from_numpy(emb[start:start + block, PLAIN][mine].astype(np.float32)), dim=1)
        lab = torch.from_numpy(lab[mine] - first)
        sums.index_add_(0, lab, f.double())
        counts.index_add_(0, lab, torch.ones(len(lab), dtype=torch.float64))
    return (sums / counts.clamp(min=1)[:, None]).float()
