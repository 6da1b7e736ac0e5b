"""IJB template aggregation and TAR at FAR: hand-made protocols and insightface's loop as reference."""
import numpy as np
import pytest
import sklearn.preprocessing
from sklearn.metrics import roc_curve

from evaluate.ijb import metrics


def _tiny():
    # template 1: image A (media 10) and a two-frame video B, C (media 11); template 2: image D.
    feats = np.array([[1, 0], [0, 1], [0, 3], [1, 0]], np.float32)
    faceness = np.array([2, 1, 1, 1], np.float32)
    return feats, faceness, np.array([1, 1, 1, 2]), np.array([10, 11, 11, 20])


@pytest.mark.parametrize("norm,det,expected", [
    (True, False, 1 / np.sqrt(5)),  # t1 = A + mean(B, C) = [1, 2]
    (True, True, 1 / np.sqrt(2)),  # t1 = 2A + mean(B, C) = [2, 2]
    (False, True, 2 / np.sqrt(5)),  # t1 = 2A/|A| + mean(B/|B|, C/|C|) = [2, 1]
    (False, False, 1 / np.sqrt(2)),  # t1 = [1, 0] + [0, 1]
])
def test_template_scores_hand_computed(norm, det, expected):
    feats, faceness, templates, medias = _tiny()
    s = metrics.template_scores(feats, faceness, templates, medias, np.array([1, 2]), np.array([2, 1]),
                            norm=norm, det=det)
    np.testing.assert_allclose(s, [expected, expected], rtol=1e-6)


def _insightface_scores(img_feats, faceness, templates, medias, p1, p2, norm, det):
    """insightface eval_ijbc.py image2template_feature + verification, restated as the reference."""
    x = img_feats.copy()
    if not norm:
        x = x / np.sqrt(np.sum(x ** 2, -1, keepdims=True))
    if det:
        x = x * faceness[:, np.newaxis]
    unique = np.unique(templates)
    tf = np.zeros((len(unique), x.shape[1]))
    for c, t in enumerate(unique):
        (ind_t,) = np.where(templates == t)
        f, m = x[ind_t], medias[ind_t]
        um, counts = np.unique(m, return_counts=True)
        media = []
        for u, ct in zip(um, counts):
            (ind_m,) = np.where(m == u)
            media += [f[ind_m]] if ct == 1 else [np.mean(f[ind_m], axis=0, keepdims=True)]
        tf[c] = np.sum(np.array(media), axis=0)
    tf = sklearn.preprocessing.normalize(tf)
    t2id = np.zeros((max(unique) + 1, 1), dtype=int)
    for c, t in enumerate(unique):
        t2id[t] = c
    return np.sum(tf[t2id[p1]] * tf[t2id[p2]], -1).flatten()


@pytest.mark.parametrize("norm,det", metrics.CONFIGS + ((False, False),))
def test_template_scores_match_insightface_loop(norm, det):
    rng = np.random.default_rng(0)
    n = 400
    feats = rng.standard_normal((n, 16)).astype(np.float32)
    faceness = rng.uniform(0.5, 1.0, n).astype(np.float32)
    templates = rng.integers(0, 60, n) * 3 + 5  # sparse ids, as IJB's are
    medias = rng.integers(0, 8, n)
    used = np.unique(templates)
    p1, p2 = rng.choice(used, 500), rng.choice(used, 500)
    ours = metrics.template_scores(feats, faceness, templates, medias, p1, p2, norm=norm, det=det)
    ref = _insightface_scores(feats, faceness, templates, medias, p1, p2, norm, det)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_unknown_template_in_pairs_is_an_error():
    feats, faceness, templates, medias = _tiny()
    with pytest.raises(ValueError, match="template 7"):
        metrics.template_scores(feats, faceness, templates, medias, np.array([1]), np.array([7]))


def test_tar_at_far_hand_computed():
    # 1000 impostors below 10 of 20 genuines: the ROC is (0, 0) -> (0, 0.5) -> (1, 0.5) -> (1, 1);
    # at every FAR the nearest FPR is 0, and of the two points there insightface takes TPR 0.5.
    neg = np.linspace(0.0, 0.5, 1000)
    pos = np.r_[np.full(10, 0.9), np.full(10, -0.5)]
    scores = np.r_[pos, neg]
    labels = np.r_[np.ones(20, int), np.zeros(1000, int)]
    assert metrics.tar_at_far(scores, labels) == {f: 0.5 for f in metrics.DEFAULT_FARS}


def _insightface_pick(scores, labels, far):
    fpr, tpr, _ = roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, i = min(list(zip(abs(fpr - far), range(len(fpr)))))
    return tpr[i]


def test_tar_at_far_matches_insightface_pick():
    rng = np.random.default_rng(3)
    labels = (rng.random(20000) < 0.05).astype(int)
    scores = rng.standard_normal(20000) + 2.0 * labels
    ours = metrics.tar_at_far(scores, labels, fars=(1e-4, 1e-3, 1e-2, 1e-1))
    for far, tar in ours.items():
        assert tar == _insightface_pick(scores, labels, far)


def test_verify_11_reports_three_configs_and_headline():
    rng = np.random.default_rng(1)
    subjects = np.repeat(np.arange(30), 4)
    centres = rng.standard_normal((30, 8))
    feats = (centres[subjects] + 0.1 * rng.standard_normal((120, 8))).astype(np.float32)
    templates = np.arange(120) // 2  # two images per template, two templates per subject
    medias = np.arange(120)
    t_subject = subjects[::2]
    p1, p2 = np.meshgrid(np.arange(60), np.arange(60))
    keep = p1 < p2
    p1, p2 = p1[keep], p2[keep]
    labels = (t_subject[p1] == t_subject[p2]).astype(int)
    r = metrics.verify_11(feats, np.ones(120, np.float32), templates, medias, p1, p2, labels)
    assert set(r) == {"Norm:True_Det:True", "Norm:True_Det:False", "Norm:False_Det:True", "headline"}
    assert r["headline"]["config"] == "Norm:False_Det:True" and r["headline"]["far"] == 1e-4
    assert r["headline"]["tar"] == r["Norm:False_Det:True"][1e-4]["tar"] > 0.9
