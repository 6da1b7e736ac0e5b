"""The synthetic identity dataset: layouts, stable identities, learnable but not trivial, pair sets."""
import os
import pickle

import numpy as np
import simplejpeg

from convert import face_render
from convert.recordio import RecordReader, unpack
from convert.synth import write_pairs_bin, write_synthetic


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

    assert sorted(os.listdir(synth_folder)) == [f"{i:06d}" for i in range(IDENTITIES)]
    reader = RecordReader(os.path.join(synth_rec, "train.rec"), os.path.join(synth_rec, "train.idx"))
    with open(os.path.join(synth_folder, "000002", "0003.jpg"), "rb") as f:
        assert f.read() == unpack(reader.read(1 + 2 * PER_IDENTITY + 3))[1]


def test_identity_looks_the_same_whichever_call_renders_it(tmp_path):
    a = face_render.render(5, 17, [0, 1, 2, 3])
    b = face_render.render(5, 17, [2])
    assert np.array_equal(a[2], b[0])
    write_synthetic(tmp_path / "x", 2, 3, seed=5, fmt="folder", first_identity=16, workers=1)
    with open(tmp_path / "x" / "000017" / "0002.jpg", "rb") as f:
        assert f.read() == simplejpeg.encode_jpeg(a[2], quality=95, colorspace="RGB")
    assert not np.array_equal(face_render.render(6, 17, [2]), b)


def test_identities_learnable_but_not_trivial():
    """Nearest class mean on 4x-downsampled raw pixels: clearly above chance, far from perfect."""
    n, m = 20, 10
    x = np.stack([face_render.render(0, i, range(m)) for i in range(n)]).astype(np.float32)
    x = x.reshape(n, m, 28, 4, 28, 4, 3).mean(axis=(3, 5)).reshape(n, m, -1)
    means = x[:, : m // 2].mean(axis=1)  # class means from half the images, test on the other half
    test = x[:, m // 2 :].reshape(-1, x.shape[-1])
    pred = np.argmin(((test[:, None] - means[None]) ** 2).sum(-1), axis=1)
    acc = (pred == np.repeat(np.arange(n), m - m // 2)).mean()
    assert 2.0 / n < acc < 0.7, acc


def test_pairs_bin(tmp_path):
    path = tmp_path / "val.bin"
    write_pairs_bin(path, identities=6, per_identity_images=4, pairs=10, seed=1, first_identity=100, workers=1)
    with open(path, "rb") as f:
        bins, issame = pickle.load(f)
    assert len(bins) == 20 and len(issame) == 10 and sum(issame) == 5
    assert all(isinstance(b, bytes) and simplejpeg.decode_jpeg(b).shape == (112, 112, 3) for b in bins)
    # Every image is one of identities 100..105 (not the training ids 0..); same pairs share one.
    import convert.synth as synth

    owner = {}
    for identity in range(100, 106):
        for n, jpeg in enumerate(synth._encode_identity((1, identity, list(range(4))))):
            owner[jpeg] = identity
    for i, same in enumerate(issame):
        a, b = owner[bins[2 * i]], owner[bins[2 * i + 1]]
        assert (a == b) == same and bins[2 * i] != bins[2 * i + 1]
