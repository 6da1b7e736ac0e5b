"""Pair verification: reading .bin and arrow sets, the metric against a re-statement of insightface's
code and hand-made cases, and the image pass end to end."""
import numpy as np
import pytest
import sklearn.preprocessing
from sklearn.model_selection import KFold

from evaluate import verification
from evaluate.verification import evaluate
from tests.evaluate.conftest import manual_fused, pair_set, write_arrow_folder, write_bin


def _insightface_accuracy(embeddings, issame, nfolds=10):
    """insightface arcface_torch/eval/verification.py calculate_roc (pca=0), restated as the reference."""
    thresholds = np.arange(0, 4, 0.01)
    e1, e2 = embeddings[0::2], embeddings[1::2]
    actual = np.asarray(issame)
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    acc = np.zeros(nfolds)

    def calc(threshold, d, same):
        pred = np.less(d, threshold)
        tp = np.sum(np.logical_and(pred, same))
        tn = np.sum(np.logical_and(np.logical_not(pred), np.logical_not(same)))
        return float(tp + tn) / d.size

    for k, (train, test) in enumerate(KFold(n_splits=nfolds, shuffle=False).split(np.arange(len(actual)))):
        acc_train = np.array([calc(t, dist[train], actual[train]) for t in thresholds])
        acc[k] = calc(thresholds[np.argmax(acc_train)], dist[test], actual[test])
    return np.mean(acc), np.std(acc)


def _random_pairs(rng, pairs, dim, noise):
    issame = rng.random(pairs) < 0.5
    a = rng.standard_normal((pairs, dim))
    b = np.where(issame[:, None], a + noise * rng.standard_normal((pairs, dim)), rng.standard_normal((pairs, dim)))
    emb = np.empty((2 * pairs, dim))
    emb[0::2], emb[1::2] = a, b
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb, issame


@pytest.mark.parametrize("seed,pairs,noise", [(0, 600, 1.0), (1, 503, 1.4), (2, 1000, 0.8)])
def test_accuracy_equals_insightface_to_the_last_digit(seed, pairs, noise):
    emb, issame = _random_pairs(np.random.default_rng(seed), pairs, 32, noise)
    ours = evaluate(emb, issame)
    acc, std = _insightface_accuracy(emb, issame)
    assert 0.55 < ours["acc"] < 0.999  # a case where thresholds matter
    assert ours["acc"] == acc and ours["std"] == std


def test_separable_set_is_perfect():
    # same pairs: identical vectors (distance 0); different pairs: orthogonal (distance 2).
    eye = np.eye(40)
    emb = np.zeros((80, 40))
    issame = np.array([i % 2 == 0 for i in range(40)])
    for i in range(40):
        emb[2 * i] = eye[i]
        emb[2 * i + 1] = eye[i] if issame[i] else eye[(i + 1) % 40]
    r = evaluate(emb, issame)
    assert r["acc"] == 1.0 and r["std"] == 0.0
    assert r["val"] == 1.0 and r["far"] == 0.0


def test_known_errors_give_known_accuracy():
    # 100 pairs, 10 folds of 10. Same pairs at distance 0.5, different at 1.5, except that
    # pair 0 (a same pair) sits at 1.5: its fold scores 9/10, every other fold 10/10.
    issame = np.array([i % 2 == 0 for i in range(100)])
    d = np.where(issame, 0.5, 1.5)
    d[0] = 1.5
    # two unit vectors at squared distance d: angle with 2 - 2cos = d
    cos = 1 - d / 2
    emb = np.zeros((200, 2))
    emb[0::2, 0] = 1.0
    emb[1::2, 0], emb[1::2, 1] = cos, np.sqrt(1 - cos ** 2)
    r = evaluate(emb, issame)
    accs = np.array([0.9] + [1.0] * 9)
    assert r["acc"] == pytest.approx(accs.mean(), abs=1e-15)
    assert r["std"] == pytest.approx(accs.std(), abs=1e-15)


def test_val_at_far_is_the_largest_threshold_within_target():
    emb, issame = _random_pairs(np.random.default_rng(5), 4000, 16, 1.0)
    r = evaluate(emb, issame)
    dist = np.sum((emb[0::2] - emb[1::2]) ** 2, 1)
    thresholds = np.arange(0, 4, 0.001)
    vals, fars = [], []
    for train, test in KFold(10).split(dist):
        d, s = dist[train], issame[train]
        far_train = np.array([np.sum((d < t) & ~s) / np.sum(~s) for t in thresholds])
        t = thresholds[np.nonzero(far_train <= 1e-3)[0].max()]
        vals.append(np.sum((dist[test] < t) & issame[test]) / np.sum(issame[test]))
        fars.append(np.sum((dist[test] < t) & ~issame[test]) / np.sum(~issame[test]))
    assert r["val"] == pytest.approx(np.mean(vals), abs=1e-12)
    assert r["val_std"] == pytest.approx(np.std(vals), abs=1e-12)
    assert r["far"] == pytest.approx(np.mean(fars), abs=1e-12)
    assert 0 < r["val"] < 1


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match=r"\[2P, D\]"):
        evaluate(np.zeros((10, 4)), np.ones(4, bool))


def test_load_bin_reads_images_and_flags(tmp_path):
    images, issame = pair_set(6)
    write_bin(tmp_path / "lfw.bin", images, issame)
    vs = verification.load_bin(tmp_path / "lfw.bin")
    assert vs.name == "lfw" and vs.images == tuple(images) and vs.issame.tolist() == issame


def test_load_bin_reads_numpy_arrays(tmp_path):
    images, issame = pair_set(2)
    write_bin(tmp_path / "x.bin", [np.frombuffer(b, np.uint8) for b in images], np.array(issame))
    assert verification.load_bin(tmp_path / "x.bin").images == tuple(images)


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


def test_bin_end_to_end(tmp_path, tiny_model):
    images, issame = pair_set(40, size=96)  # not 112: the pass resizes
    write_bin(tmp_path / "agedb_30.bin", images, issame)
    vs = verification.load_bin(tmp_path / "agedb_30.bin")
    r = verification.test(tiny_model, vs, batch_size=16, progress=False)
    fused, xnorm = manual_fused(tiny_model, images)
    expected = verification.evaluate(sklearn.preprocessing.normalize(fused.astype(np.float64)), issame)
    assert {k: r[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    assert r["xnorm"] == pytest.approx(xnorm, rel=1e-5)
    assert r["pairs"] == 40 and r["acc"] >= 0.75  # one identity twice is closer than two identities
