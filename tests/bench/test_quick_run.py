"""`python -m bench --quick` end to end on tiny data: every CPU stage runs and the reports hold the documented
keys with positive figures. A smoke test: it asserts structure, never speed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import cli, report

REPO = Path(__file__).resolve().parents[2]
STAGES = {"convert", "read", "decode", "pipeline", "step"}
RESULT_KEYS = {"stage", "name", "img_per_s", "spread", "baseline", "baseline_img_per_s", "ratio"}
ENV_KEYS = {"cpu_model", "cpu_cores", "gpu", "gpu_driver", "torch", "dali", "numpy", "python", "dataset"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # One torch thread: the machine's cores are shared with other tests; this is no speed measurement.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bench", "--quick", "--images", "100", "--batch-size", "32", "--device", "cpu",
           "--cache-dir", str(out / "cache"), "--json", str(out / "r.json"), "--markdown", str(out / "r.md"),
           "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_json_holds_every_stage_with_the_documented_keys(quick):
    out, _ = quick
    doc = json.loads((out / "r.json").read_text())
    assert ENV_KEYS <= set(doc["environment"])
    ds = doc["environment"]["dataset"]
    assert ds["images"] == 100 and ds["mean_image_bytes"] > 0 and ds["rec_bytes"] > 0
    assert doc["environment"]["device"] == "cpu" and doc["environment"]["cpu_cores"] >= 1
    assert {r["stage"] for r in doc["results"]} == STAGES
    pairs = {(r["stage"], r["name"], r["baseline"]) for r in doc["results"]}
    assert ("pipeline", "pipeline_jpeg", "insightface_baseline") in pairs
    assert ("pipeline", "pipeline_jpeg", "decode_ceiling") in pairs
    assert ("pipeline", "pipeline_raw", "pipeline_jpeg") in pairs
    assert ("convert", "convert_rec", "copy") in pairs and ("step", "step", "reference_step") in pairs
    assert ("convert", "validation_pass", "copy") in pairs and ("convert", "convert_rec", "validation_pass") in pairs
    assert ("step", "pipeline_supply", "step") in pairs
    for r in doc["results"]:
        assert RESULT_KEYS <= set(r), r
        lo, hi = r["spread"]
        assert 0 < lo <= r["img_per_s"] <= hi
        assert r["baseline_img_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["img_per_s"] / r["baseline_img_per_s"])
    step = next(r for r in doc["results"] if r["stage"] == "step")
    assert 0 <= step["data_wait"] <= 1 and 0 <= step["baseline_data_wait"] <= 1
    # DALI alone, as a user would write it: the native webdataset reader and a plain decode graph
    assert {("pipeline", "pipeline_jpeg", "dali_readers_webdataset"),
            ("decode", "decode_batches", "dali_plain_graph")} <= pairs
    # torchvision's decoder is measured where it decodes here, else left out with the reason.
    for stage, ours in (("decode", "decode_batches"), ("pipeline", "pipeline_jpeg")):
        left_out = [s for s in doc["skipped"] if (s["stage"], s["name"]) == (stage, "torchvision_nvjpeg")]
        assert ((stage, ours, "torchvision_nvjpeg") in pairs) != bool(left_out) and all(s["reason"] for s in left_out)


def test_stdout_table_and_markdown_list_every_stage(quick):
    out, stdout = quick
    md = (out / "r.md").read_text()
    for stage in STAGES:
        assert any(line.startswith(stage) for line in stdout.splitlines()), stdout
        assert f"| {stage} |" in md
    assert "mean image" in stdout and "torch " + torch.__version__ in stdout


def test_plot_draws_the_run_or_says_matplotlib_is_missing(quick, tmp_path, capsys):
    out, _ = quick
    doc = json.loads((out / "r.json").read_text())
    if report.check_plot_available() is None:
        report.plot(tmp_path / "p.png", doc)
        assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        code = cli.main(["--plot", str(tmp_path / "p.png"), "--cache-dir", str(tmp_path), "--no-progress"])
        assert code == 2 and "python -m bench: error: --plot needs matplotlib" in capsys.readouterr().err
        assert not (tmp_path / "p.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["--device", "cuda", "--cache-dir", str(tmp_path), "--no-progress"]) == 2
    assert "python -m bench: error: --device cuda: torch finds no CUDA device" in capsys.readouterr().err


def test_unknown_stage_and_models_are_refused(tmp_path, capsys):
    assert cli.main(["--stages", "read,warp", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m bench: error: --stages: unknown stage(s) ['warp']") and len(err.splitlines()) == 1
    assert cli.main(["--stages", "step", "--student", "resnet9000", "--images", "60", "--device", "cpu",
                     "--cache-dir", str(tmp_path), "--no-progress"]) == 2
    assert "python -m bench: error: --student 'resnet9000': not a registered backbone" in capsys.readouterr().err
