"""The synthetic identity dataset as files: insightface .rec layout, folders holding the same images, pair sets."""
import os
import pickle

import simplejpeg

from convert.recordio import RecordReader, unpack
from convert.synthetic import write_pairs_bin


def test_rec_layout_is_insightface(synth_rec):
    from tests.convert.datasets import IDENTITIES, PER_IDENTITY

    reader = RecordReader(os.path.join(synth_rec, "train.rec"), os.path.join(synth_rec, "train.idx"))
    k = IDENTITIES * PER_IDENTITY
    header, payload = unpack(reader.read(0))
    assert (header.flag, header.label, payload) == (2, (k + 1.0, k + 1.0 + IDENTITIES), b"")
    for key in range(1, k + 1):
        header, payload = unpack(reader.read(key))
        assert header.flag == 0 and header.label == float((key - 1) // PER_IDENTITY)
        assert simplejpeg.decode_jpeg(payload).shape == (112, 112, 3)
    for i in range(IDENTITIES):
        header, payload = unpack(reader.read(k + 1 + i))
        assert header.label == (1.0 + i * PER_IDENTITY, 1.0 + (i + 1) * PER_IDENTITY) and payload == b""
    assert len(reader) == 1 + k + IDENTITIES
    assert open(os.path.join(synth_rec, "property")).read() == f"{IDENTITIES},112,112"


def test_folder_layout_matches_rec(synth_rec, synth_folder):
    from tests.convert.datasets import IDENTITIES, PER_IDENTITY

    from common.files import LOCK_NAME

    assert sorted(os.listdir(synth_folder)) == [LOCK_NAME] + [f"{i:06d}" for i in range(IDENTITIES)]
    reader = RecordReader(os.path.join(synth_rec, "train.rec"), os.path.join(synth_rec, "train.idx"))
    with open(os.path.join(synth_folder, "000002", "0003.jpg"), "rb") as f:
        assert f.read() == unpack(reader.read(1 + 2 * PER_IDENTITY + 3))[1]


def test_pairs_bin(tmp_path):
    path = tmp_path / "val.bin"
    write_pairs_bin(path, identities=6, per_identity_images=4, pairs=10, seed=1, first_identity=100, workers=1)
    with open(path, "rb") as f:
        bins, issame = pickle.load(f)
    assert len(bins) == 20 and len(issame) == 10 and sum(issame) == 5
    assert all(isinstance(b, bytes) and simplejpeg.decode_jpeg(b).shape == (112, 112, 3) for b in bins)
    # Every image is one of identities 100..105 (not the training ids 0..); same pairs share one.
    from convert.synthetic import writers

    owner = {}
    for identity in range(100, 106):
        for n, jpeg in enumerate(writers._encode_identity((1, identity, list(range(4))))):
            owner[jpeg] = identity
    for i, same in enumerate(issame):
        a, b = owner[bins[2 * i]], owner[bins[2 * i + 1]]
        assert (a == b) == same and bins[2 * i] != bins[2 * i + 1]
