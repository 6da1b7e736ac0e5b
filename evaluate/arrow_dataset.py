"""Read CVLFace's evaluation sets, saved by Hugging Face `datasets`, with pyarrow alone.

`Dataset.save_to_disk` writes a folder holding `state.json` (which names the arrow files in order),
`dataset_info.json` and `data-XXXXX-of-XXXXX.arrow` files in Arrow's IPC stream format. CVLFace puts
a `metadata.pt` beside them (a `torch.save` of plain arrays and lists), read here without running
any code from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import torch

_FILE_MAGIC = b"ARROW1"


def arrow_files(folder: str | Path) -> list[Path]:
    """The arrow files of a `save_to_disk` folder, in the order `state.json` gives."""
    folder = Path(folder)
    state = folder / "state.json"
    if state.is_file():
        names = [d["filename"] for d in json.loads(state.read_text()).get("_data_files", [])]
        if not names:
            raise ValueError(f"{state}: no _data_files listed")
        files = [folder / n for n in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{state} names arrow files that are missing: {missing}")
        return files
    files = sorted(folder.glob("*.arrow"))
    if not files:
        raise FileNotFoundError(f"{folder}: no state.json and no .arrow files; not a datasets folder")
    return files


def _read_arrow(path: Path) -> pa.Table:
    # datasets writes the IPC stream format; a file written with the IPC file format starts with
    # the magic "ARROW1". Both hold the same table.
    with open(path, "rb") as f:
        head = f.read(len(_FILE_MAGIC))
    with pa.memory_map(str(path), "r") as source:
        reader = pa.ipc.open_file(source) if head == _FILE_MAGIC else pa.ipc.open_stream(source)
        return reader.read_all()


def read_dataset_folder(folder: str | Path, columns: Sequence[str] = ()) -> pa.Table:
    """Concatenate the folder's arrow files into one table, checking that `columns` exist."""
    folder = Path(folder)
    tables = [_read_arrow(p) for p in arrow_files(folder)]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{folder}: missing columns {missing}; found {table.column_names}")
    return table


def image_column_bytes(column, *, source: Path) -> list[bytes]:
    """Encoded bytes of each row of a `datasets.Image` column (a struct of bytes and path)."""
    rows = column.to_pylist()
    out = []
    for i, row in enumerate(rows):
        data = row.get("bytes") if isinstance(row, dict) else row
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise ValueError(f"{source}: row {i} of column image holds no encoded bytes "
                             f"(found {type(data).__name__}); images stored as paths are not supported")
        out.append(bytes(data))
    return out


def _numpy_safe_globals() -> list:
    """The globals a pickled numpy array needs, under its numpy 1 and numpy 2 module names."""
    from numpy._core import multiarray

    dtype_classes = [type(np.dtype(c)) for c in "?bhilqBHILQefdgUSO"]
    return [
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        multiarray._reconstruct,
        np.ndarray,
        np.dtype,
        *dtype_classes,
    ]


def load_metadata(path: str | Path) -> dict[str, Any]:
    """CVLFace's `metadata.pt`: torch.load with weights_only=True, allowing numpy arrays only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: metadata file not found")
    with torch.serialization.safe_globals(_numpy_safe_globals()):
        meta = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a dict of arrays, found {type(meta).__name__}")
    return meta


def meta_array(meta: dict, key: str, *, source: Path, dtype=None) -> np.ndarray:
    """One entry of a metadata dict as a numpy array, with an error naming the key if absent."""
    if key not in meta:
        raise KeyError(f"{source}: metadata has no {key!r}; found {sorted(meta)}")
    value = meta[key]
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    return np.asarray(value, dtype=dtype)
