"""bench/gpu_check.sh's CPU dry run end to end: every step passes on the CPU with tiny sizes, says what it
skipped for want of CUDA, the training resumes rather than restarts, and $OUT holds the files the GPU run
brings back. A broken script shows here, not on a GPU machine. It asserts structure, never speed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # an end-to-end check (still part of make test): about 40 s on 2 cores

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"
FILES = {"gpu_check.log", "gpu_env.txt", "gpu_tests.log", "gpu_train.log", "gpu_train_metrics.jsonl",
         "bench_gpu.json", "bench_gpu.md", "bench_gpu.log"}  # at most 8: what the device tool brings back
STEPS = ("data", "env", "tests", "train", "resume", "resumed", "bench")


def _env(tmp_path: Path) -> dict:
    # TMPDIR: the script's scratch folder (removed by it) lands in the test's own.
    return dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable, TMPDIR=str(tmp_path))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run(["bash", str(SCRIPT), "run", "--cpu-dry-run"], cwd=tmp, env=_env(tmp),
                          capture_output=True, text=True, timeout=300)
    out = tmp / "out"
    summary = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").exists() else ""
    assert proc.returncode == 0, f"{summary}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out, proc.stdout, tmp


def test_every_step_passes_and_out_holds_the_files(dry_run):
    out, stdout, tmp = dry_run
    assert {p.name for p in out.iterdir()} == FILES
    summary = (out / "gpu_check.log").read_text()
    for name in STEPS:
        assert any(line.startswith(name + " ") and line.rstrip().endswith(" ok") for line in summary.splitlines()), \
            (name, summary)
    assert "FAILED" not in summary and summary.rstrip().splitlines()[-1].startswith("gpu_check: every step passed")
    assert "gpu_check: every step passed" in stdout
    assert not [p for p in tmp.iterdir() if p.name.startswith("gpu-check.")], "the scratch folder was left behind"


def test_what_needs_cuda_is_skipped_with_a_reason(dry_run):
    out, _, _ = dry_run
    summary = (out / "gpu_check.log").read_text()
    assert "install  skipped: dry run" in summary and "nvidia-smi skipped: dry run: needs a CUDA driver" in summary
    env = (out / "gpu_env.txt").read_text()
    assert "nvidia-smi: not on this machine" in env
    for key in ("torch: ", "dali: ", "device: cpu", "torchvision: ", "torchvision_nvjpeg: ", "decoder: "):
        assert key in env, (key, env)
    tests = (out / "gpu_tests.log").read_text()
    assert "SKIPPED" in tests and "needs a CUDA GPU" in tests and "failed" not in tests


def test_training_resumes_to_the_later_stop_with_verification(dry_run):
    out, stdout, _ = dry_run
    log = (out / "gpu_train.log").read_text()
    assert "resumed, not restarted: the records of steps 1..6 kept byte for byte, steps 7..9 added" in log
    assert "resumed, not restarted" in stdout
    records = [json.loads(line) for line in (out / "gpu_train_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 10))
    checks = [r for r in records if r.get("event") == "verification"]
    assert [r["step"] for r in checks] == [3, 6, 9] and all(r["target"].endswith("verify.bin") for r in checks)


def test_bench_json_holds_the_stages_and_the_torchvision_baseline_or_its_reason(dry_run):
    out, _, _ = dry_run
    doc = json.loads((out / "bench_gpu.json").read_text())
    assert doc["environment"]["device"] == "cpu"
    assert doc["settings"]["student"] == "mobilefacenet_s" and doc["settings"]["teacher"] == "iresnet_s"
    assert {r["stage"] for r in doc["results"]} == {"decode", "pipeline", "step"}
    pairs = {(r["stage"], r["name"], r["baseline"]) for r in doc["results"]}
    assert {("step", "step", "reference_step"), ("step", "step_cache", "step")} <= pairs
    for stage, ours in (("decode", "decode_batches"), ("pipeline", "pipeline_jpeg")):
        measured = (stage, ours, "torchvision_nvjpeg") in pairs
        left_out = [s for s in doc["skipped"] if (s["stage"], s["name"]) == (stage, "torchvision_nvjpeg")]
        assert measured != bool(left_out), (stage, doc["skipped"])
        assert all(s["reason"] for s in left_out)
    step = next(r for r in doc["results"] if r["name"] == "step")
    assert 0 <= step["data_wait"] <= 1
    assert "| step |" in (out / "bench_gpu.md").read_text()


def test_a_bad_command_line_is_one_line_and_exit_2(tmp_path):
    for args in (["run", "--fast"], [], ["go"]):
        proc = subprocess.run(["bash", str(SCRIPT), *args], env=_env(tmp_path), capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
        assert "usage: bash bench/gpu_check.sh" in proc.stderr
    assert not (tmp_path / "out").exists()
