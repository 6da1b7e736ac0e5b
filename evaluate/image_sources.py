"""Any collection of images a user holds, as one list: keys, labels where known, and their encoded bytes.

Five kinds, told apart by what the path is:
- a folder of identity folders (`convert folder`'s source: convert.sources.FolderSource): key = the path
  below the folder, label = the identity's number in sorted folder order (as `convert folder` numbers
  it), identity = the folder's name;
- a flat folder of images (.jpg, .jpeg, .png, .bmp, .webp): key = the file name, no label;
- an MXNet .rec (a .rec file, or a folder holding train.rec; convert.sources.RecSource): key = the record
  key, label = its header's label;
- our shards (a folder holding manifest.json; pipeline.ShardSamples): key = the sample's 9-digit key,
  label = its class;
- a pair set (.bin, or a CVLFace arrow folder; evaluate.verification.load_set): key = the image's
  position, no label (pair i is images 2i and 2i+1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from common.errors import InputError
from convert.manifest import MANIFEST_NAME
from convert.sources import IMAGE_EXTENSIONS, FolderSource, RecSource

KINDS = ("identity folders", "flat folder", "rec", "shards", "pair set")


class ImageSourceError(InputError, ValueError):
    """A path that is none of the kinds of image source, or one that holds no image."""


@dataclass(frozen=True)
class ImageSource:
    """`keys[i]` names image i in its source; `labels`/`identities` are None where the source has none.
    `read(indices)` gives the images' stored bytes (encoded, or raw HWC pixels when `raw_size` is set)."""

    path: str
    kind: str
    keys: tuple
    read: Callable[[Sequence[int]], list]
    labels: Optional[np.ndarray] = None  # int64 [N]
    identities: Optional[tuple] = None  # str [N]
    raw_size: Optional[int] = None  # raw-encoded shards: HWC uint8 pixels of raw_size x raw_size
    where: Optional[Callable[[int], str]] = None  # image i named in a message; default: path and key

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, found {self.kind!r}")
        if not self.keys:
            raise ImageSourceError(f"{self.path}: holds no image")
        for name, column in (("labels", self.labels), ("identities", self.identities)):
            if column is not None and len(column) != len(self.keys):
                raise ValueError(f"{name}: {len(column)} for {len(self.keys)} images")

    def __len__(self) -> int:
        return len(self.keys)

    def name(self, i: int) -> str:
        return self.where(i) if self.where is not None else f"{self.path}: {self.keys[i]}"


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def open_source(path: str | os.PathLike) -> ImageSource:
    """The ImageSource at `path`, by what it is (see the module docstring)."""
    path = Path(path)
    if path.is_file():
        if path.suffix == ".rec":
            return _rec(path)
        if path.suffix == ".bin":
            return _pair_set(path)
        raise ImageSourceError(f"{path}: expected a folder, a .rec or a .bin file")
    if not path.is_dir():
        raise ImageSourceError(f"{path}: no such file or folder")
    if (path / MANIFEST_NAME).is_file():
        return _shards(path)
    if (path / "train.rec").is_file():
        return _rec(path)
    if any(path.glob("*.arrow")):
        return _pair_set(path)
    entries = [e for e in os.scandir(path) if not e.name.startswith(".")]
    folders = [e.name for e in entries if e.is_dir()]
    images = sorted(e.name for e in entries if e.is_file() and _is_image(e.name))
    if folders and images:
        raise ImageSourceError(f"{path}: holds both images ({images[0]}, ...) and folders ({sorted(folders)[0]}, ...); "
                               f"give a folder of identity folders or a flat folder of images")
    if images:
        return _flat(path, images)
    if folders:
        return _identity_folders(path)
    raise ImageSourceError(f"{path}: holds no images ({'/'.join(IMAGE_EXTENSIONS)}) and no identity folders")


def _read_files(root: Path, names: Sequence[str]) -> Callable[[Sequence[int]], list]:
    def read(indices: Sequence[int]) -> list:
        return [(root / names[i]).read_bytes() for i in indices]
    return read


def _flat(path: Path, images: list) -> ImageSource:
    return ImageSource(str(path), "flat folder", tuple(images), _read_files(path, images),
                       where=lambda i: str(path / images[i]))


def _identity_folders(path: Path) -> ImageSource:
    src = FolderSource(str(path))  # refuses an empty identity folder and names that are no UTF-8
    return ImageSource(str(path), "identity folders", tuple(src.paths), _read_files(path, src.paths),
                       labels=np.asarray(src.labels, dtype=np.int64),
                       identities=tuple(src.classes[label] for label in src.labels), where=src.where)


def _rec(path: Path) -> ImageSource:
    src = RecSource(str(path))
    labels = np.fromiter((src.read(i)[0] for i in range(len(src))), dtype=np.int64, count=len(src))
    return ImageSource(str(path), "rec", tuple(str(k) for k in src.keys), lambda idx: [src.image(i) for i in idx],
                       labels=labels, where=src.where)


def _shards(path: Path) -> ImageSource:
    import pipeline  # DALI's package: imported only for shards

    samples = pipeline.ShardSamples(path)
    keys = np.arange(samples.num_samples)
    return ImageSource(str(path), "shards", tuple(f"{k:09d}" for k in keys),
                       lambda idx: samples.encoded(np.asarray(idx, dtype=np.int64)), labels=samples.labels(keys),
                       raw_size=samples.image_size if samples.encoding == "raw" else None)


def _pair_set(path: Path) -> ImageSource:
    from evaluate.verification import load_set

    vset = load_set(path)
    return ImageSource(str(path), "pair set", tuple(str(i) for i in range(len(vset.images))),
                       lambda idx: [vset.images[i] for i in idx],
                       where=lambda i: f"{path}: image {i} of {len(vset.images)}")
