"""Our shard bytes equal webdataset's TarWriter output, and our index equals DALI's wds2idx."""
import io
import os

import numpy as np
import pytest

from convert.shard_writer import ShardWriter


def _samples():
    rng = np.random.default_rng(0)
    sizes = [0, 1, 511, 512, 513, 1024, 5000, 12345]
    return [(k, rng.bytes(n), int(rng.integers(0, 100000))) for k, n in enumerate(sizes)]


def test_bytes_equal_webdataset_tarwriter(tmp_path):
    wds = pytest.importorskip("webdataset")
    w = ShardWriter(str(tmp_path), "s", "jpg")
    for key, image, label in _samples():
        w.write(key, image, label)
    rec = w.close()
    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False, mtime=0, user="adadistill", group="adadistill") as ref:
        for key, image, label in _samples():
            ref.write({"__key__": f"{key:09d}", "cls": str(label).encode(), "jpg": image})
    ours = (tmp_path / "s.tar").read_bytes()
    assert ours == buf.getvalue()
    assert rec.bytes == len(ours) and rec.samples == len(_samples())


def test_index_equals_dali_wds2idx(tmp_path):
    wds2idx = pytest.importorskip("wds2idx")
    w = ShardWriter(str(tmp_path), "s", "raw")
    for key, image, label in _samples():
        w.write(key, image, label)
    w.close()
    with wds2idx.IndexCreator(str(tmp_path / "s.tar"), str(tmp_path / "ref.idx"), verbose=False) as ic:
        ic.create_index()
    assert (tmp_path / "s.idx").read_text() == (tmp_path / "ref.idx").read_text()
    assert sorted(os.listdir(tmp_path)) == ["ref.idx", "s.idx", "s.tar"]  # no temporary files left


def test_shards_of_many_chunks_equal_tarwriter_and_hash_their_bytes(tmp_path):
    """Samples worth several flushes: every chunk written, hashed and synced in order."""
    import hashlib

    wds = pytest.importorskip("webdataset")
    rng = np.random.default_rng(1)
    samples = [(k, rng.bytes(int(rng.integers(1, 3 << 20))), k % 7) for k in range(9)]
    w = ShardWriter(str(tmp_path), "s", "jpg")
    for key, image, label in samples:
        w.write(key, memoryview(image), label)  # the converter hands views of the mapped .rec
    rec = w.close()
    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False, mtime=0, user="adadistill", group="adadistill") as ref:
        for key, image, label in samples:
            ref.write({"__key__": f"{key:09d}", "cls": str(label).encode(), "jpg": image})
    ours = (tmp_path / "s.tar").read_bytes()
    assert ours == buf.getvalue() and rec.sha256 == hashlib.sha256(ours).hexdigest()


def test_a_failing_sync_names_the_shard_and_leaves_no_file(tmp_path, monkeypatch):
    import errno

    from convert import shard_writer
    from common.files import WriteError

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shard_writer.os, "fdatasync", full)
    w = ShardWriter(str(tmp_path), "s", "jpg")
    with pytest.raises(WriteError, match=r"s\.tar.*No space left on device"):
        for key in range(4):
            w.write(key, bytes(3 << 20), 0)
        w.close()
    assert os.listdir(tmp_path) == []
