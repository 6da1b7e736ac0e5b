"""Read the evaluation sets' files, which come from outside, as data only: no code from them runs.

insightface's `.bin` sets are pickles, and a pickle can name any importable callable and run it on
load; `RestrictedUnpickler` resolves only the few globals that numpy arrays need and refuses every
other one before it is imported, so a crafted file fails instead of running code.

CVLFace's sets are folders saved by Hugging Face `datasets` (`Dataset.save_to_disk`), read here with
pyarrow alone: `state.json` (which names the arrow files in order), `dataset_info.json` and
`data-XXXXX-of-XXXXX.arrow` files in Arrow's IPC stream format. CVLFace puts a `metadata.pt` beside
them (a `torch.save` of plain arrays and lists), read with torch.load(weights_only=True) and the same
numpy allowlist.

A file that is not what it should be (truncated, garbage, a pickle asking for code) raises an InputError
naming the file and, for a pickle, the byte where reading stopped: UnsafePickleError for a refusal,
DataFileError for anything else.
"""

from __future__ import annotations

import codecs
import json
import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np
import pyarrow as pa
import torch

from common.errors import InputError

_FILE_MAGIC = b"ARROW1"


def _numpy_reconstruct():
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
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
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
                                f"{_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def arrow_files(folder: str | Path) -> list[Path]:
    """The arrow files of a `save_to_disk` folder, in the order `state.json` gives."""
    folder = Path(folder)
    state = folder / "state.json"
    if state.is_file():
        try:
            names = [d["filename"] for d in json.loads(state.read_text()).get("_data_files", [])]
        except (OSError, ValueError, AttributeError, KeyError, TypeError) as err:
            raise DataFileError(f"{state}: not a datasets state file ({type(err).__name__}: {err})") from None
        if not names:
            raise DataFileError(f"{state}: no _data_files listed")
        files = [folder / n for n in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataFileError(f"{state} names arrow files that are missing: {missing}")
        return files
    files = sorted(folder.glob("*.arrow"))
    if not files:
        raise DataFileError(f"{folder}: no state.json and no .arrow files; not a datasets folder")
    return files


def _read_arrow(path: Path) -> pa.Table:
    # datasets writes the IPC stream format; a file written with the IPC file format starts with
    # the magic "ARROW1". Both hold the same table.
    try:
        with open(path, "rb") as f:
            head = f.read(len(_FILE_MAGIC))
        with pa.memory_map(str(path), "r") as source:
            reader = pa.ipc.open_file(source) if head == _FILE_MAGIC else pa.ipc.open_stream(source)
            return reader.read_all()
    except (OSError, pa.ArrowException) as err:  # ArrowInvalid and ArrowIOError both derive from these
        raise DataFileError(f"{path}: not a readable arrow file ({_first_line(err)})") from None


def read_dataset_folder(folder: str | Path, columns: Sequence[str] = ()) -> pa.Table:
    """Concatenate the folder's arrow files into one table, checking that `columns` exist."""
    folder = Path(folder)
    tables = [_read_arrow(p) for p in arrow_files(folder)]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataFileError(f"{folder}: missing columns {missing}; found {table.column_names}")
    return table


def image_column_bytes(column, *, source: Path) -> list[bytes]:
    """Encoded bytes of each row of a `datasets.Image` column (a struct of bytes and path)."""
    rows = column.to_pylist()
    out = []
    for i, row in enumerate(rows):
        data = row.get("bytes") if isinstance(row, dict) else row
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise DataFileError(f"{source}: row {i} of column image holds no encoded bytes "
                             f"(found {type(data).__name__}); images stored as paths are not supported")
        out.append(bytes(data))
    return out


def read_image_folder(folder: str | Path, columns: Sequence[str] = ()) -> tuple[pa.Table, np.ndarray, tuple]:
    """A CVLFace image set: (table, order, images).

    The table holds the columns image, index and `columns` as stored; `order` is the row numbers
    that sort it by `index` (a stable sort); `images` is the encoded bytes of each row in that order.
    """
    folder = Path(folder)
    table = read_dataset_folder(folder, columns=("image", "index", *columns))
    order = np.argsort(np.asarray(table.column("index").to_numpy()), kind="stable")
    images = image_column_bytes(table.column("image"), source=folder)
    return table, order, tuple(images[i] for i in order)


def _numpy_safe_globals() -> list:
    """The globals a pickled numpy array needs, under its numpy 1 and numpy 2 module names."""
    dtype_classes = [type(np.dtype(c)) for c in "?bhilqBHILQefdgUSO"]
    return [
        (_numpy_reconstruct(), "numpy.core.multiarray._reconstruct"),
        _numpy_reconstruct(),
        np.ndarray,
        np.dtype,
        *dtype_classes,
    ]


def load_metadata(path: str | Path) -> dict[str, Any]:
    """CVLFace's `metadata.pt`: torch.load with weights_only=True, allowing numpy arrays only."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path}: metadata file not found")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            meta = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's refusal: a many-line message; keep the line that says why
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        why = next((line for line in lines if "nsupported" in line), lines[0] if lines else "")
        if "GLOBAL" in why:
            raise UnsafePickleError(f"{path}: refusing to load it: torch.load(weights_only=True) says: {why}") from None
        raise DataFileError(f"{path}: not a readable torch.save file ({why})") from None
    except (OSError, RuntimeError, EOFError, ValueError) as err:  # not a torch.save file, or truncated
        raise DataFileError(f"{path}: not a readable torch.save file ({_first_line(err)})") from None
    if not isinstance(meta, dict):
        raise DataFileError(f"{path}: expected a dict of arrays, found {type(meta).__name__}")
    return meta


def meta_array(meta: dict, key: str, *, source: Path, dtype=None) -> np.ndarray:
    """One entry of a metadata dict as a numpy array, with an error naming the key if absent."""
    if key not in meta:
        raise DataFileError(f"{source}: metadata has no {key!r}; found {sorted(meta)}")
    value = meta[key]
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    return np.asarray(value, dtype=dtype)
