"""Reading the sets: .bin with the restricted unpickler, CVLFace arrow folders and metadata."""
import os
import pickle

import numpy as np
import pytest
import torch

from evaluate import verification
from evaluate.arrow_dataset import load_metadata
from evaluate.safe_pickle import UnsafePickleError
from tests.evaluate.conftest import pair_set, write_arrow_folder, write_bin


def test_load_bin_reads_images_and_flags(tmp_path):
    images, issame = pair_set(6)
    write_bin(tmp_path / "lfw.bin", images, issame)
    vs = verification.load_bin(tmp_path / "lfw.bin")
    assert vs.name == "lfw" and vs.images == tuple(images) and vs.issame.tolist() == issame


def test_load_bin_reads_numpy_arrays(tmp_path):
    images, issame = pair_set(2)
    write_bin(tmp_path / "x.bin", [np.frombuffer(b, np.uint8) for b in images], np.array(issame))
    assert verification.load_bin(tmp_path / "x.bin").images == tuple(images)


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


def test_arrow_set_is_read_in_index_order(tmp_path):
    images, issame = pair_set(5)
    order = np.random.default_rng(0).permutation(10)  # rows stored shuffled; index says where each goes
    write_arrow_folder(tmp_path / "lfw", {
        "image": [images[i] for i in order], "index": order.tolist(),
        "is_same": [issame[i // 2] for i in order]})
    vs = verification.load_set(tmp_path / "lfw")
    assert vs.images == tuple(images) and vs.issame.tolist() == issame


def test_arrow_set_missing_column_is_named(tmp_path):
    write_arrow_folder(tmp_path / "bad", {"image": pair_set(1)[0], "index": [0, 1]}, shards=1)
    with pytest.raises(ValueError, match="is_same"):
        verification.load_set(tmp_path / "bad")


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
