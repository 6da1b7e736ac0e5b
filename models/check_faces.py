"""The aligned faces an export is checked on: a `.bin` set, a folder of images, or the default set.

The default is rendered, not stored: 32 synthetic faces (8 identities x 4 images) from
convert.synthetic, the generator the tests and `make demo` train and evaluate on, so that it exists in
any clone of the repository (no photographs are shipped with it). Pass `--check-data` with real aligned
faces (a verification `.bin`, or a folder of 112x112 crops) for a check on real pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from common.errors import InputError
from common.safe_pickle import read_pairs_bin

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MAX_IMAGES = 256  # enough to find a disagreement; an iresnet100 at batch 1 stays within a minute
DEFAULT_IDENTITIES, DEFAULT_PER_IDENTITY, DEFAULT_SEED = 8, 4, 0


class CheckDataError(InputError, ValueError):
    """--check-data that holds no images, or is neither a .bin nor a folder."""


@dataclass(frozen=True)
class CheckFaces:
    encoded: tuple[bytes, ...]
    source: str  # what the card says they were

    def __post_init__(self) -> None:
        if not self.encoded:
            raise CheckDataError(f"{self.source}: no images to check the export on")


def default_faces() -> CheckFaces:
    import simplejpeg

    from convert.synthetic import render
    from convert.synthetic.writers import JPEG_QUALITY

    encoded = [simplejpeg.encode_jpeg(pixels, quality=JPEG_QUALITY, colorspace="RGB")
               for identity in range(DEFAULT_IDENTITIES)
               for pixels in render(DEFAULT_SEED, identity, range(DEFAULT_PER_IDENTITY))]
    return CheckFaces(tuple(encoded), f"{len(encoded)} synthetic faces (convert.synthetic, seed {DEFAULT_SEED}, "
                                      f"{DEFAULT_IDENTITIES} identities; no --check-data given)")


def read_faces(path: Optional[Path]) -> CheckFaces:
    """The first MAX_IMAGES faces of `path` (a .bin or a folder searched recursively, sorted by path)."""
    if path is None:
        return default_faces()
    path = Path(path)
    if path.is_file() and path.suffix == ".bin":
        images, _ = read_pairs_bin(path)  # the evaluator's reader too: a .bin is a pickle, read as data only
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        images = tuple(p.read_bytes() for p in files[:MAX_IMAGES])
    else:
        raise CheckDataError(f"{path}: --check-data must be a .bin verification set or a folder of images "
                             f"({', '.join(IMAGE_SUFFIXES)})")
    kept = tuple(images[:MAX_IMAGES])
    return CheckFaces(kept, f"{len(kept)} images of {path}" + (f" (the first of {len(images)})"
                                                             if len(images) > len(kept) else ""))
