"""Untrusted files read as data only: a .bin pickle that calls a function, a metadata.pt with code; files that
are garbage or truncated are named in one line."""
import os
import pickle

import numpy as np
import pytest
import torch

from common.errors import InputError
from common.safe_pickle import DataFileError, UnsafePickleError, load_restricted
from evaluate import verification
from evaluate.readers import load_metadata, read_dataset_folder
from tests.evaluate.conftest import pair_set, write_arrow_folder, write_bin


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_a_function_call(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump(([_Evil(marker)], [True]), f, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"evil\.bin.*(posix|os)\.system") as info:
        verification.load_bin(tmp_path / "evil.bin")
    assert not marker.exists() and isinstance(info.value, InputError)


def test_metadata_with_numpy_arrays_loads_without_code(tmp_path):
    meta = {"templates": np.arange(4), "faceness_scores": np.ones(4, np.float32), "paths": ["a", "b"]}
    torch.save(meta, tmp_path / "metadata.pt")
    got = load_metadata(tmp_path / "metadata.pt")
    np.testing.assert_array_equal(got["templates"], np.arange(4))
    assert got["faceness_scores"].dtype == np.float32 and got["paths"] == ["a", "b"]


def test_metadata_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"x": _Evil(marker)}, tmp_path / "metadata.pt")
    with pytest.raises(Exception, match="(?i)weights.only|unsupported global"):
        load_metadata(tmp_path / "metadata.pt")
    assert not marker.exists()


def test_an_empty_image_is_data(tmp_path):
    # Protocol 2 spells b"" as a call of bytes() with no argument: allowed, and only so.
    images, issame = pair_set(1)
    write_bin(tmp_path / "one.bin", [images[0], b""], issame)
    assert verification.load_bin(tmp_path / "one.bin").images == (images[0], b"")


class _Allocate:
    def __reduce__(self):
        return bytes, (10**6,)


def test_bytes_with_an_argument_is_refused(tmp_path):
    with open(tmp_path / "big.bin", "wb") as f:
        pickle.dump(([_Allocate()], []), f, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"big\.bin: byte \d+: the pickle calls bytes\(\) with 1 argument"):
        load_restricted(tmp_path / "big.bin")


@pytest.mark.parametrize("content, message", [
    (b"", r"truncated: reading stopped at byte 0 of 0"),
    (b"\x80\x02]q\x00(", r"truncated: reading stopped at byte 6 of 6"),
    (b"hello world", r"byte \d+: not a readable pickle"),
])
def test_pickle_that_is_garbage_or_truncated_is_named(tmp_path, content, message):
    (tmp_path / "x.bin").write_bytes(content)
    with pytest.raises(DataFileError, match=r"x\.bin: " + message) as info:
        load_restricted(tmp_path / "x.bin")
    assert "\n" not in str(info.value)


def test_arrow_file_that_is_garbage_is_named(tmp_path):
    write_arrow_folder(tmp_path / "lfw", {"image": pair_set(1)[0], "index": [0, 1], "is_same": [True, True]},
                       shards=1)
    arrow = next((tmp_path / "lfw").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])
    with pytest.raises(DataFileError, match=rf"{arrow.name}: not a readable arrow file") as info:
        read_dataset_folder(tmp_path / "lfw")
    assert "\n" not in str(info.value)


def test_metadata_that_is_garbage_is_named(tmp_path):
    (tmp_path / "metadata.pt").write_bytes(b"not a torch file" * 4)
    with pytest.raises(DataFileError, match=r"metadata\.pt: not a readable torch\.save file") as info:
        load_metadata(tmp_path / "metadata.pt")
    assert "\n" not in str(info.value)
