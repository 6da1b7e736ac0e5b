"""Atomic writes: the target is the old file or the new one, and what a killed writer left is cleared."""
import os

import pytest

from common.files import atomic_path, remove_stale_temporaries, sha256_file, write_atomic, write_json_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    write_atomic(tmp_path / "a.txt", "old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(tmp_path / "a.txt", fail)
    assert (tmp_path / "a.txt").read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_suffix_json_and_checksum(tmp_path):
    with atomic_path(tmp_path / "sub" / "x.npz", suffix=".npz") as tmp:
        assert tmp.name.endswith(".npz") and tmp.parent == tmp_path / "sub"
        tmp.write_bytes(b"abc")
    write_json_atomic(tmp_path / "m.json", {"b": 1, "a": [2]})
    assert (tmp_path / "m.json").read_text() == '{\n "a": [\n  2\n ],\n "b": 1\n}\n'
    assert sha256_file(tmp_path / "sub" / "x.npz") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_what_a_killed_writer_left_is_removed_and_nothing_else(tmp_path):
    killed = atomic_path(tmp_path / "train-000000.tar")  # neither committed nor discarded, as after SIGKILL
    killed.tmp.write_bytes(b"half a shard")
    with atomic_path(tmp_path / "v.npz", suffix=".npz") as tmp:
        tmp.write_bytes(b"x")
    stale_npz = tmp_path / ".v.npz.12345.tmp.npz"
    stale_npz.write_bytes(b"x")
    for name in ("keep.tmp", ".hidden", "train-000001.tar"):
        (tmp_path / name).write_bytes(b"")
    remove_stale_temporaries(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [".hidden", "keep.tmp", "train-000001.tar", "v.npz"]
