"""Open-set TPIR at FPIR and rank-k on hand-made galleries."""
import numpy as np
import pytest

from evaluate import ranking


def test_tpir_at_fpir_hand_computed():
    gallery = np.eye(3)[:2]  # label 1 -> e0, label 2 -> e1
    probes = np.array([
        [0.9, 0, 0], [0.6, 0.5, 0], [0.4, 0.1, 0],  # mated: ranks 1, 2, 1 with mate scores .9, .5, .4
        [0.8, 0, 0], [0.7, 0, 0], [0.3, 0.2, 0], [0, 0.05, 0],  # non-mated: best scores .8, .7, .3, .05
    ])
    labels = np.array([1, 2, 1, 9, 9, 9, 9])
    r = ranking.identification(probes, labels, gallery, np.array([1, 2]), ranks=(1, 2),
                               fpirs=(0.1, 0.25, 0.5, 0.75), chunk=3)
    assert r["mated"] == 3 and r["nonmated"] == 4
    assert r["rank"] == pytest.approx({1: 2 / 3, 2: 1.0})
    # thresholds: round(4 f) = 0 -> above .8, 1 -> .8, 2 -> .7, 3 -> .3
    assert r["tpir"] == pytest.approx({0.1: 1 / 3, 0.25: 1 / 3, 0.5: 1 / 3, 0.75: 2 / 3})


def test_no_mated_probe_is_an_error():
    with pytest.raises(ValueError, match="has a mate"):
        ranking.identification(np.eye(2), np.array([5, 6]), np.eye(2), np.array([1, 2]))
