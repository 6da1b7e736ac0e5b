"""Operating thresholds: the cosine threshold and TAR at each FAR, and where the impostor pairs run out."""
import numpy as np
import pytest

from evaluate import thresholds, verification


def _brute(cos, same, far):
    """The lowest threshold among the scores whose FAR (score >= t) is at most `far`, and its TAR."""
    imp, gen = cos[~same], cos[same]
    ok = [t for t in np.unique(cos) if (imp >= t).mean() <= far]
    t = min(ok)
    return t, (gen >= t).mean(), (imp >= t).mean()


def test_thresholds_match_a_direct_count_and_stop_where_the_impostors_do():
    rng = np.random.default_rng(0)
    same = np.r_[np.ones(300, bool), np.zeros(1000, bool)]
    cos = np.r_[rng.normal(0.6, 0.15, 300), rng.normal(0.0, 0.15, 1000)]
    out = thresholds.operating_points(cos, same)
    assert (out["genuine_pairs"], out["impostor_pairs"]) == (300, 1000)
    assert list(out["far"]) == [1e-1, 1e-2, 1e-3, 1e-4]
    assert out["far"][1e-4] == "too few impostor pairs for FAR 0.0001 (1000 pairs)"
    for far in (1e-1, 1e-2, 1e-3):
        t, tar, reached = _brute(cos, same, far)
        p = out["far"][far]
        assert p["threshold"] == pytest.approx(t, abs=0) and p["tar"] == pytest.approx(tar) and p["far"] == reached
        assert p["far"] <= far
    # 1e-3 of 1000 impostor pairs is one: the threshold accepts the highest impostor score, not the second
    second, first = np.sort(cos[~same])[-2:]
    assert second < out["far"][1e-3]["threshold"] <= first


def test_asked_fars_and_too_few_impostors():
    same = np.r_[np.ones(10, bool), np.zeros(50, bool)]
    cos = np.linspace(1, -1, 60)
    out = thresholds.operating_points(cos, same, fars=[0.5, 0.02, 0.01])
    assert out["far"][0.02]["tar"] == 1.0 and out["far"][0.02]["far"] == 0.02
    assert out["far"][0.01] == "too few impostor pairs for FAR 0.01 (50 pairs)"
    with pytest.raises(ValueError, match="genuine and impostor"):
        thresholds.operating_points(cos, np.ones(60, bool))


def test_cosine_is_one_minus_half_insightfaces_squared_distance():
    emb = np.random.default_rng(1).normal(size=(40, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    d2 = np.sum(np.square(emb[0::2] - emb[1::2]), 1)
    assert np.allclose(thresholds.scores(emb), 1 - d2 / 2, atol=1e-12)


def test_every_verification_result_reports_thresholds(tiny_model):
    from tests.evaluate.conftest import pair_set

    images, issame = pair_set(20)
    vset = verification.VerificationSet("toy", tuple(images), np.asarray(issame))
    result = verification.test(tiny_model, vset, device="cpu", batch_size=16, progress=False)
    points = result["thresholds"]
    assert points["impostor_pairs"] == 10 and list(points["far"]) == [1e-1, 1e-2]
    assert isinstance(points["far"][1e-1]["threshold"], float) and "too few" in points["far"][1e-2]
