"""Cross-check convert.recordio against mxnet 1.9.1, byte for byte (outside the test suite: own venv).

    python3 -m venv /tmp/mxvenv && /tmp/mxvenv/bin/pip install numpy==1.23.5 mxnet==1.9.1
    /tmp/mxvenv/bin/python tests/convert/mxnet_crosscheck.py [DIR_WITH_train.rec]

Packs headers both ways, writes the same records with MXIndexedRecordIO and RecordWriter (split
records included; with a DIR, also every record of its train.rec), compares .rec and .idx bytes,
and has each side read the other's files.
"""
import os
import struct
import sys
import tempfile

import numpy as np
import mxnet as mx
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from convert.recordio import IRHeader, RecordReader, RecordWriter, pack, unpack

M = struct.pack("<I", 0xCED7230A)
rng = np.random.default_rng(0)
payloads = [b"", M, M + M, b"ab" + M, b"abcd" + M + M + b"tail", b"x" * 7 + M, M * 5 + b"123"]
payloads += [rng.bytes(int(rng.integers(0, 5000))) for _ in range(50)]
payloads += [rng.bytes(100) + M + rng.bytes(int(rng.integers(0, 9))) for _ in range(20)]
synth = []
if len(sys.argv) > 1:  # e.g. a `python -m convert synth` output: header, images, identity records
    src = RecordReader(os.path.join(sys.argv[1], "train.rec"), os.path.join(sys.argv[1], "train.idx"))
    synth = [src.read(k) for k in src.keys]
out = tempfile.mkdtemp()

records = []
for k, p in enumerate(payloads):
    records.append(("scalar", IRHeader(0, float(k), k, 0), p))
    records.append(("vector", IRHeader(3, (1.0, 2.5, float(k)), k, 7), p))

def write_mx(prefix, recs):
    w = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "w")
    for key, r in enumerate(recs):
        w.write_idx(key, r)
    w.close()

def write_ours(prefix, recs):
    with RecordWriter(prefix + ".rec", prefix + ".idx") as w:
        for key, r in enumerate(recs):
            w.write_idx(key, r)

mx_packed = [mx.recordio.pack(mx.recordio.IRHeader(h.flag, h.label if kind == "scalar" else list(h.label), h.id, h.id2), p)
             for kind, h, p in records]
our_packed = [pack(h, p) for _, h, p in records]
assert mx_packed == our_packed, "pack differs"
for name, recs in (("records", our_packed), ("synth", synth)):
    if not recs:
        continue
    write_mx(f"{out}/mx_{name}", recs)
    write_ours(f"{out}/our_{name}", recs)
    for ext in ("rec", "idx"):
        a = open(f"{out}/mx_{name}.{ext}", "rb").read()
        b = open(f"{out}/our_{name}.{ext}", "rb").read()
        print(name, ext, "identical" if a == b else "DIFFERENT", len(a))
        assert a == b, f"{name}.{ext}: our bytes differ from mxnet's"
    # Each side reads the other's file.
    r = mx.recordio.MXIndexedRecordIO(f"{out}/our_{name}.idx", f"{out}/our_{name}.rec", "r")
    assert [r.read_idx(k) for k in range(len(recs))] == recs
    ours = RecordReader(f"{out}/mx_{name}.rec", f"{out}/mx_{name}.idx")
    assert [ours.read(k) for k in range(len(recs))] == recs
    for k in range(len(recs)):
        hm, pm = mx.recordio.unpack(recs[k]); ho, po = unpack(recs[k])
        assert pm == po and hm.flag == ho.flag and hm.id == ho.id and np.allclose(np.atleast_1d(hm.label), np.atleast_1d(ho.label))
print("mxnet cross-check: ok,", len(our_packed) + len(synth), "records")
