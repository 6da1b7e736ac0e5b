"""Read the evaluation sets' files, which come from outside, as data only: no code from them runs.

insightface's `.bin` sets are pickles, read with common.safe_pickle's data-only unpickler.

CVLFace's sets are folders saved by Hugging Face `datasets` (`Dataset.save_to_disk`), read here with
pyarrow alone: `state.json` (which names the arrow files in order), `dataset_info.json` and
`data-XXXXX-of-XXXXX.arrow` files in Arrow's IPC stream format. CVLFace puts a `metadata.pt` beside
them (a `torch.save` of plain arrays and lists), read with torch.load(weights_only=True) and the same
numpy allowlist.

A file that is not what it should be (truncated, garbage, a refused global) raises
common.safe_pickle's DataFileError or UnsafePickleError (InputErrors) naming the file and the position.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import torch

from common.safe_pickle import DataFileError, UnsafePickleError, first_line, numpy_reconstruct

_FILE_MAGIC = b"ARROW1"


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
        raise DataFileError(f"{path}: not a readable arrow file ({first_line(err)})") from None


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
        (numpy_reconstruct(), "numpy.core.multiarray._reconstruct"),
        numpy_reconstruct(),
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
        raise DataFileError(f"{path}: not a readable torch.save file ({first_line(err)})") from None
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
