"""Read pickles that may only hold plain data: containers, bytes, numbers, booleans and numpy arrays.

insightface's verification sets (`lfw.bin`, ...) are pickles, and a pickle can name any importable
callable and run it on load. This unpickler resolves only the few globals that numpy arrays need and
refuses every other one before it is imported, so a crafted file fails instead of running code.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle named a global outside the data-only allowlist."""


def _numpy_reconstruct():
    # numpy 2 moved numpy.core to numpy._core; files written under numpy 1 name the old module.
    from numpy._core import multiarray

    return multiarray._reconstruct


# (module, name) -> resolver. Each entry rebuilds data only: `_reconstruct`, `ndarray` and `dtype`
# make an empty array of a dtype that `__setstate__` then fills from bytes; `_codecs.encode` is how
# protocol-2 pickles spell a bytes literal (it only turns a str into bytes).
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the globals in `_ALLOWED`."""

    def __init__(self, file: BinaryIO, *, source: str = "<stream>", encoding: str = "bytes"):
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        resolver = _ALLOWED.get((module, name))
        if resolver is None:
            allowed = ", ".join(f"{m}.{n}" for m, n in sorted(_ALLOWED))
            raise UnsafePickleError(
                f"{self._source}: the pickle asks for the global {module}.{name}, which a data file "
                f"never needs; refusing to load it (allowed: {allowed})"
            )
        return resolver()


def load_restricted(path: str | Path, *, encoding: str = "bytes") -> Any:
    """Unpickle `path` with the data-only allowlist.

    `encoding="bytes"` reads Python 2 `str` objects (insightface's encoded images) as bytes.
    """
    path = Path(path)
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, source=str(path), encoding=encoding).load()


def loads_restricted(data: bytes, *, source: str = "<bytes>", encoding: str = "bytes") -> Any:
    """Unpickle in-memory `data` with the data-only allowlist."""
    return RestrictedUnpickler(io.BytesIO(data), source=source, encoding=encoding).load()
