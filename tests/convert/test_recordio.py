"""RecordIO reader and writer: layout, split records, both insightface layouts, DALI's mxnet reader."""
import struct

import numpy as np
import pytest

from convert.recordio import MAGIC, IRHeader, RecordIOError, RecordReader, RecordWriter, encode_record, pack, unpack

M = struct.pack("<I", MAGIC)


def test_header_round_trip_scalar_and_vector():
    h, payload = unpack(pack(IRHeader(0, 7.0, 12, 0), b"abc"))
    assert (h.flag, h.label, h.id, payload) == (0, 7.0, 12, b"abc")
    h, payload = unpack(pack(IRHeader(2, (3.0, 9.0), 5, 1), b""))
    assert (h.flag, h.label, h.id, h.id2, payload) == (2, (3.0, 9.0), 5, 1, b"")
    # mx.recordio.pack layout: 'IfQQ' then the float32 labels, then the payload.
    assert pack(IRHeader(2, (3.0, 9.0), 5, 1), b"x") == struct.pack("<IfQQ", 2, 0.0, 5, 1) + np.float32([3, 9]).tobytes() + b"x"


def test_encode_plain_record_layout():
    data = b"hello"  # 5 bytes: padded to 8
    assert encode_record(data) == struct.pack("<II", MAGIC, 5) + b"hello\0\0\0"


def test_encode_splits_at_aligned_magic_only():
    # Magic at offset 4 (aligned) splits; magic at offset 13 (unaligned) does not.
    data = b"abcd" + M + b"efghi" + M + b"xyz"
    enc = encode_record(data)
    expected = (
        struct.pack("<II", MAGIC, 1 << 29 | 4) + b"abcd"
        + struct.pack("<II", MAGIC, 3 << 29 | (len(data) - 8)) + data[8:] + b"\0" * ((-(len(data) - 8)) % 4)
    )
    assert enc == expected


@pytest.mark.parametrize(
    "payload",
    [b"", M, M + M, b"ab" + M, b"abcd" + M + M + b"tail", M * 3 + b"12345678" + M, bytes(range(256)) * 3 + M],
)
def test_split_records_round_trip(tmp_path, payload):
    rec, idx = tmp_path / "a.rec", tmp_path / "a.idx"
    records = [pack(IRHeader(0, float(k), k, 0), payload + bytes([k])) for k in range(3)]
    with RecordWriter(rec, idx) as w:
        for k, r in enumerate(records):
            w.write_idx(k, r)
    reader = RecordReader(rec, idx)
    assert [reader.read(k) for k in range(3)] == records
    # view(): the mapped file where a record is one part, the joined parts where it is split
    assert [bytes(reader.view(k)) for k in range(3)] == records
    reader.close()
    with pytest.warns(UserWarning, match="scanning"):
        scanned = RecordReader(rec)
    assert [r for _, r in scanned] == records


def test_reader_rejects_bad_files(tmp_path):
    rec, idx = tmp_path / "a.rec", tmp_path / "a.idx"
    with RecordWriter(rec, idx) as w:
        w.write_idx(0, pack(IRHeader(0, 1.0, 0, 0), b"x" * 100))
        w.write_idx(1, pack(IRHeader(0, 2.0, 1, 0), b"y" * 100))
    good = rec.read_bytes()
    rec.write_bytes(good[:-10])
    with pytest.raises(RecordIOError, match=r"a\.rec: truncated record at offset \d+"):
        RecordReader(rec, idx).read(1)
    rec.write_bytes(b"\0\0\0\0" + good[4:])
    with pytest.raises(RecordIOError, match="bad magic 0x00000000 at offset 0"):
        RecordReader(rec, idx).read(0)
    rec.write_bytes(good)
    idx.write_text(f"0\t0\n1\t{len(good) + 100}\n")
    with pytest.raises(RecordIOError, match=r"a\.idx:2: key 1 at offset \d+ lies past the end"):
        RecordReader(rec, idx)


def _dali_read_mxnet(rec, idx, n):
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=n, num_threads=1, device_id=None)
    def pipe():
        data, labels = fn.readers.mxnet(path=[str(rec)], index_path=[str(idx)], random_shuffle=False)
        return data, labels

    p = pipe()
    p.build()
    data, labels = p.run()
    return [np.array(data[i]).tobytes() for i in range(n)], [np.array(labels[i]) for i in range(n)]


def test_dali_mxnet_reader_reads_our_rec(tmp_path):
    """What our writer writes (split records included) is what DALI's fn.readers.mxnet reads back."""
    pytest.importorskip("nvidia.dali")
    rec, idx = tmp_path / "d.rec", tmp_path / "d.idx"
    rng = np.random.default_rng(0)
    payloads = [rng.bytes(int(rng.integers(1, 300))) for _ in range(6)]
    payloads[2] = b"abcd" + M + b"ef" + M + M + b"gh"  # split into several parts
    payloads[4] = M + payloads[4]  # header is 24 bytes: magic at aligned offset 24
    with RecordWriter(rec, idx) as w:
        for k, p in enumerate(payloads):
            w.write_idx(k, pack(IRHeader(0, float(10 + k), k, 0), p))
        w.write_idx(6, pack(IRHeader(2, (3.0, 4.0), 6, 0), b"vec"))
    data, labels = _dali_read_mxnet(rec, idx, 7)
    assert data[:6] == payloads
    assert [float(l[0]) for l in labels[:6]] == [10.0 + k for k in range(6)]
    assert data[6] == b"vec" and labels[6].tolist() == [3.0, 4.0]


@pytest.mark.parametrize("keys", [[5, 3, 4, 0], [7, 1_000_000, 3, 40_000]], ids=["dense", "sparse"])
def test_index_lookups_dense_and_sparse_keys(tmp_path, keys):
    """Keys in any order, dense (a table by key) or sparse (a binary search): each reads its own record,
    `keys` is file order, an absent key is absent; a line of blanks between takes the line-by-line path."""
    rec, idx = tmp_path / "a.rec", tmp_path / "a.idx"
    with RecordWriter(rec, idx) as w:
        for k in keys:
            w.write_idx(k, pack(IRHeader(0, float(k), k, 0), bytes([k % 251]) * 10))
    for text in (idx.read_text(), idx.read_text().replace("\n", "\n   \n", 1)):
        idx.write_text(text)
        reader = RecordReader(rec, idx)
        assert reader.keys.tolist() == keys and len(reader) == len(keys)
        assert [unpack(reader.read(k))[0].id for k in keys] == keys
        assert all(k in reader for k in keys) and 2 not in reader and -1 not in reader and 10**9 not in reader
        assert reader.contains(np.array(keys + [2, 10**9])).tolist() == [True] * len(keys) + [False, False]
        with pytest.raises(KeyError, match="no record with key 2"):
            reader.read(2)
        reader.close()


def test_index_travels_to_another_reader_without_the_idx_read_again(tmp_path):
    """A converter's worker gets the parent's index with the source (pickled) and reads by it: the .idx is not
    read again (here it no longer parses), and the records are the same."""
    import pickle

    rec, idx = tmp_path / "a.rec", tmp_path / "a.idx"
    with RecordWriter(rec, idx) as w:
        for k in range(1, 6):
            w.write_idx(k, pack(IRHeader(0, float(k), k, 0), b"img%d" % k))
    parent = RecordReader(rec, idx)
    index = pickle.loads(pickle.dumps(parent.index))
    idx.write_text("garbage\n")
    worker = RecordReader(rec, idx, index=index)
    assert [worker.read(k) for k in range(1, 6)] == [parent.read(k) for k in range(1, 6)]
    assert worker.keys.tolist() == [1, 2, 3, 4, 5] and 6 not in worker
