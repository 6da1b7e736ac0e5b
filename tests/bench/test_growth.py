"""The growth stage on tiny sizes through the real code path (a .rec written, converted, loaded, in fresh
processes), and that it stays out of the default run. It asserts structure, never speed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.growth_data import class_starts, write_growth_rec
from bench.stages import default_stages, stage_names
from bench.stages.growth import FIGURES, TARGETS
from convert.sources import RecSource

REPO = Path(__file__).resolve().parents[2]


def test_growth_is_registered_but_not_a_default_stage():
    assert "growth" in stage_names() and "growth" not in default_stages()
    assert default_stages() == [s for s in stage_names() if s != "growth"]


def test_growth_rec_is_insightface_layout_with_contiguous_classes(tmp_path):
    rec, _ = write_growth_rec(tmp_path, 50, 7)
    source = RecSource(rec)
    assert source.layout == "insightface" and len(source) == 50
    labels = [source.read(i)[0] for i in range(50)]
    assert labels == sorted(labels) and set(labels) == set(range(7))
    assert np.array_equal(class_starts(50, 7), np.searchsorted(labels, np.arange(8)))


@pytest.mark.slow
def test_growth_stage_reports_points_fits_and_extrapolations(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bench", "--stages", "growth", "--growth-records", "2000,6000", "--growth-classes",
           "300", "--batch-size", "32", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
           "--json", str(tmp_path / "g.json"), "--markdown", str(tmp_path / "g.md"), "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "g.json").read_text())
    assert doc["results"] == [] and doc["environment"]["dataset"] is None
    growth = doc["growth"]
    assert [(p["records"], p["classes"]) for p in growth["points"]] == [(2000, 300), (6000, 300)]
    for p in growth["points"]:
        assert p["rec_bytes"] > p["records"] * 1000  # every record holds a real JPEG
        for figure, _, _ in FIGURES:
            assert p[figure] >= 0, (figure, p)
        assert p["convert_s"] > 0 and p["first_batch_s"] > p["index_s"] > 0 and p["convert_anon_mib"] > 0
        assert p["convert_rss_mib"] > 0 and p["loader_anon_mib"] > 0 and p["loader_rss_mib"] > 0
    assert [f["figure"] for f in growth["fits"]] == [f for f, _, _ in FIGURES]
    for f in growth["fits"]:
        (lo, y_lo), (hi, y_hi) = [(p["records"], p[f["figure"]]) for p in growth["points"]]
        assert f["intercept"] + f["slope"] * lo == pytest.approx(y_lo, abs=1e-6)  # a line through both points
        assert f["intercept"] + f["slope"] * hi == pytest.approx(y_hi, abs=1e-6)
        for name, size in TARGETS.items():
            assert f["extrapolated"][name] == pytest.approx([size, f["intercept"] + f["slope"] * size])
    assert "convert_rec: seconds" in proc.stdout and "WebFace42M (42M)" in proc.stdout
    assert "| convert_rec: seconds |" in (tmp_path / "g.md").read_text()
    assert not list((tmp_path / "cache").glob("scratch-*"))  # every size's data removed


@pytest.mark.parametrize("argv, fragment", [
    (["--growth-records", "1000,100"], "--growth-records: expected increasing sizes >= 1, found 1000,100"),
    (["--growth-records", "1k"], "--growth-records: expected comma-separated whole numbers, found '1k'"),
    (["--growth-classes", "0"], "--growth-classes: expected >= 1, found 0"),
])
def test_bad_growth_options_are_one_line(tmp_path, capsys, argv, fragment):
    from bench import cli

    assert cli.main(["--stages", "growth", "--device", "cpu", "--cache-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m bench: error: {fragment}") and len(err.splitlines()) == 1
