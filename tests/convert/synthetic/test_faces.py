"""Synthetic faces: an identity looks the same whichever call renders it; identities are learnable but not trivial."""
import numpy as np
import simplejpeg

from convert.synthetic import faces, write_synthetic


def test_identity_looks_the_same_whichever_call_renders_it(tmp_path):
    a = faces.render(5, 17, [0, 1, 2, 3])
    b = faces.render(5, 17, [2])
    assert np.array_equal(a[2], b[0])
    write_synthetic(tmp_path / "x", 2, 3, seed=5, fmt="folder", first_identity=16, workers=1)
    with open(tmp_path / "x" / "000017" / "0002.jpg", "rb") as f:
        assert f.read() == simplejpeg.encode_jpeg(a[2], quality=95, colorspace="RGB")
    assert not np.array_equal(faces.render(6, 17, [2]), b)


def test_identities_learnable_but_not_trivial():
    """Nearest class mean on 4x-downsampled raw pixels: clearly above chance, far from perfect."""
    n, m = 20, 10
    x = np.stack([faces.render(0, i, range(m)) for i in range(n)]).astype(np.float32)
    x = x.reshape(n, m, 28, 4, 28, 4, 3).mean(axis=(3, 5)).reshape(n, m, -1)
    means = x[:, : m // 2].mean(axis=1)  # class means from half the images, test on the other half
    test = x[:, m // 2 :].reshape(-1, x.shape[-1])
    pred = np.argmin(((test[:, None] - means[None]) ** 2).sum(-1), axis=1)
    acc = (pred == np.repeat(np.arange(n), m - m // 2)).mean()
    assert 2.0 / n < acc < 0.7, acc


def test_first_image_gives_new_photos_of_the_same_people(tmp_path):
    """--first-image K: images K.. of each identity, the same bytes as a set of K + n images holds there."""
    write_synthetic(tmp_path / "all", 2, 4, seed=5, fmt="folder", workers=1)
    write_synthetic(tmp_path / "new", 2, 2, seed=5, fmt="folder", workers=1, first_image=2)
    assert sorted(p.name for p in (tmp_path / "new" / "000001").iterdir()) == ["0002.jpg", "0003.jpg"]
    for name in ("000000/0002.jpg", "000001/0003.jpg"):
        assert (tmp_path / "new" / name).read_bytes() == (tmp_path / "all" / name).read_bytes()
