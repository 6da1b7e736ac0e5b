"""TinyFace: CMC on a hand-made gallery, and end to end with a small backbone from a CVLFace folder."""
import numpy as np
import pytest

from evaluate import report, tinyface
from tests.evaluate.conftest import manual_fused, write_tinyface


def _unit(deg):
    r = np.deg2rad(np.asarray(deg, float))
    return np.stack([np.cos(r), np.sin(r)], 1)


def test_tinyface_cmc_hand_computed():
    gallery = _unit([0, 90, 180, 45, 200])
    gallery_labels = np.array([1, 2, 3, -100, -100])
    # probe 1 at 10 deg: its mate (0 deg) is nearest -> rank 1.
    # probe 2 at 50 deg: the distractor at 45 deg beats its mate at 90 -> rank 2.
    # probe 3 at 100 deg: 90 (label 2) and 45 (distractor) beat its mate at 180 -> rank 3.
    # probe 7 has no mate and is left out, as CVLFace's DIR_FAR leaves out non-mated probes.
    probes = 3.0 * _unit([10, 50, 100, 30])  # scale: cmc normalises
    r = tinyface.cmc(probes, np.array([1, 2, 3, 7]), gallery, gallery_labels, ranks=(1, 2, 5))
    assert r == pytest.approx({1: 100 / 3, 2: 200 / 3, 5: 100.0})


def test_tinyface_end_to_end(tmp_path, tiny_model):
    paths, images = write_tinyface(tmp_path, seed=0)
    ts = tinyface.load_tinyface(tmp_path / "tinyface_aligned_pad_0.1")
    assert ts.gallery_labels.tolist() == [i for i in range(6) for _ in range(2)] + [-100] * 4
    r = tinyface.run(tiny_model, ts, batch_size=8, ranks=(1, 5), progress=False)
    fused, _ = manual_fused(tiny_model, images)
    probe = [i for i, p in enumerate(paths) if p.startswith("Probe")]
    gallery = [i for i, p in enumerate(paths) if not p.startswith("Probe")]
    expected = tinyface.cmc(fused[probe], np.arange(6), fused[gallery], ts.gallery_labels, (1, 5))
    assert r["rank-1"] == pytest.approx(expected[1]) and r["rank-5"] == pytest.approx(expected[5])
    assert r["probes"] == 6 and r["gallery"] == 16
    assert "rank-1" in report.table({"tinyface": r})
