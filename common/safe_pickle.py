"""insightface's `.bin` sets and other pickles from outside, read as data only: no code from them runs.

A pickle can name any importable callable and run it on load; `RestrictedUnpickler` resolves only the
few globals that numpy arrays need and refuses every other one before it is imported, so a crafted file
fails instead of running code. `read_pairs_bin` decodes a `.bin` pair set with it: models (the export's
check faces) and evaluate (the verification sets) both read `.bin` files through it.

A file that is not what it should be (truncated, garbage, a pickle asking for code) raises an InputError
naming the file and, for a pickle, the byte where reading stopped: UnsafePickleError for a refusal,
DataFileError for anything else.
"""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from common.errors import InputError


def numpy_reconstruct():
    # numpy 2 moved numpy.core to numpy._core; files written under numpy 1 name the old module.
    from numpy._core import multiarray

    return multiarray._reconstruct


class UnsafePickleError(InputError, pickle.UnpicklingError):
    """A pickle named a global outside the data-only allowlist."""


class DataFileError(InputError, ValueError):
    """An evaluation set's file that is missing, unreadable, or not what the set needs; the message names the
    file and the position (byte, row, line or key)."""


# (module, name) -> resolver. Each entry rebuilds data only: `_reconstruct`, `ndarray` and `dtype`
# make an empty array of a dtype that `__setstate__` then fills from bytes; `_codecs.encode` is how
# protocol-2 pickles spell a bytes literal (it only turns a str into bytes).
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,
}
# How protocol 2 spells an empty bytes literal: a call of bytes() without arguments (under its Python 2
# and Python 3 names), resolved to RestrictedUnpickler._empty_bytes, which takes none.
_EMPTY_BYTES = {("__builtin__", "bytes"), ("builtins", "bytes")}


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the globals in `_ALLOWED` and `_EMPTY_BYTES`."""

    def __init__(self, file: BinaryIO, *, source: str = "<stream>", encoding: str = "bytes"):
        super().__init__(file, encoding=encoding)
        self._source, self._file = source, file

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _EMPTY_BYTES:
            return self._empty_bytes
        resolver = _ALLOWED.get((module, name))
        if resolver is None:
            allowed = ", ".join(f"{m}.{n}" for m, n in sorted(_ALLOWED)) + ", bytes() without arguments"
            raise UnsafePickleError(
                f"{self._source}: byte {self._file.tell()}: the pickle asks for the global {module}.{name}, which "
                f"a data file never needs; refusing to load it (allowed: {allowed})"
            )
        return resolver()

    def _empty_bytes(self, *args) -> bytes:
        # Protocol 2 spells b"" as a call of bytes() without arguments; an argument would let the pickle
        # allocate memory at will.
        if args:
            raise UnsafePickleError(f"{self._source}: byte {self._file.tell()}: the pickle calls bytes() with "
                                    f"{len(args)} argument(s), which a data file never does; refusing to load it")
        return b""


def load_restricted(path: str | Path, *, encoding: str = "bytes") -> Any:
    """Unpickle `path` with the data-only allowlist.

    `encoding="bytes"` reads Python 2 `str` objects (insightface's encoded images) as bytes. Raises
    UnsafePickleError for a global outside the allowlist, DataFileError for a file that is missing,
    truncated or not a pickle (naming the byte where reading stopped).
    """
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as err:
        raise DataFileError(f"{path}: cannot read it ({err.strerror or err})") from err
    with f:
        try:
            return RestrictedUnpickler(f, source=str(path), encoding=encoding).load()
        except (UnsafePickleError, DataFileError):
            raise
        # Unpickling bytes that are no pickle fails in many ways (UnpicklingError, EOFError, ValueError,
        # KeyError, IndexError, struct.error, MemoryError ...): each means the same thing here.
        except Exception as err:
            if isinstance(err, EOFError) or "truncated" in str(err):
                raise DataFileError(f"{path}: truncated: reading stopped at byte {f.tell()} of "
                                    f"{os.fstat(f.fileno()).st_size}, before the pickle's end") from None
            raise DataFileError(f"{path}: byte {f.tell()}: not a readable pickle ({type(err).__name__}: "
                                f"{first_line(err)})") from None


def first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def read_pairs_bin(path: str | Path) -> tuple[tuple[bytes, ...], np.ndarray]:
    """An insightface `.bin` verification set (a pickle of (bins, issame_list)) as (encoded images, issame flags).

    Python 2 strings come back as bytes, which is what insightface's `encoding="bytes"` fallback does.
    """
    path = Path(path)
    obj = load_restricted(path, encoding="bytes")
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise DataFileError(f"{path}: expected a pickle of (bins, issame_list), found {type(obj).__name__}"
                            + (f" of length {len(obj)}" if hasattr(obj, "__len__") else ""))
    bins, issame = obj
    if not isinstance(bins, (tuple, list, np.ndarray)):
        raise DataFileError(f"{path}: bins should be a list of encoded images, found {type(bins).__name__}")
    images = []
    for i, b in enumerate(bins):
        if isinstance(b, np.ndarray):  # some converters stored each image as a uint8 array
            b = b.tobytes()
        if not isinstance(b, (bytes, bytearray)):
            raise DataFileError(f"{path}: image {i} of {len(bins)} should be encoded bytes, found {type(b).__name__}")
        images.append(bytes(b))
    flags = np.asarray(issame)
    if flags.ndim != 1:
        raise DataFileError(f"{path}: issame_list should be a flat list, found shape {flags.shape}")
    if flags.dtype != np.bool_:
        if not np.isin(flags, (0, 1)).all():
            raise DataFileError(f"{path}: issame_list should hold booleans, found values {np.unique(flags)[:5]}")
        flags = flags.astype(bool)
    if len(images) != 2 * flags.size:
        raise DataFileError(f"{path}: expected 2 images per pair = {2 * flags.size} images for {flags.size} "
                            f"issame flags, found {len(images)}")
    return tuple(images), flags
