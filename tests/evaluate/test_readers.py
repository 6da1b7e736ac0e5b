"""Untrusted files read as data only: a .bin pickle that calls a function, a metadata.pt with code."""
import os
import pickle

import numpy as np
import pytest
import torch

from evaluate import verification
from evaluate.readers import UnsafePickleError, load_metadata


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_a_function_call(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump(([_Evil(marker)], [True]), f, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"evil\.bin.*(posix|os)\.system"):
        verification.load_bin(tmp_path / "evil.bin")
    assert not marker.exists()


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
