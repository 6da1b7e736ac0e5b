"""eval.benchmarks: IJB-C and TinyFace during training through the evaluator's own code (evaluate.targets), a
metrics.jsonl record and a TensorBoard scalar each; missing data stops the run at start, naming the key."""
from __future__ import annotations

import json
import math
import typing
from pathlib import Path

import pytest

import configs
import convert
from configs.schema import EvalConfig
from convert.synthetic import write_synthetic
from distill import cli, metrics, verify
from evaluate import targets
from tests.evaluate.conftest import write_ijb_cvlface, write_tinyface

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.usefixtures("one_process")


def _config(tmp_path: Path) -> Path:
    write_synthetic(tmp_path / "rec", 8, 4, seed=0, workers=1)  # 32 images: 4 steps of 8 an epoch
    convert.convert_rec(tmp_path / "rec", tmp_path / "shards", workers=1, progress=False)
    text = {"seed": 1, "data": {"shards": str(tmp_path / "shards")},
            "model": {"name": "mobilefacenet_s", "embedding_size": 16}, "distill": {"mode": "none", "s": 16.0},
            "train": {"batch_size": 8, "lr": 0.05, "lr_batch": 8, "epochs": 1, "max_steps": 2, "log_every": 10,
                      "checkpoint_every": 100, "precision": "fp32"},
            "eval": {"batch_size": 16, "every_steps": 2, "every_epochs": 0}}
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(text))
    return path


def test_benchmarks_are_evaluated_and_recorded(tmp_path, capsys):
    data = tmp_path / "facerec_val"
    write_ijb_cvlface(data, "IJBC")
    write_tinyface(data)
    run = tmp_path / "run"
    assert cli.run(["--config", str(_config(tmp_path)), f"output={run}", "eval.benchmarks=[IJBC,tinyface]",
                    f"eval.ijb_root={data}", f"eval.tinyface_root={data}"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    bench = {r["target"]: r for r in records if r.get("event") == "benchmark"}
    assert set(bench) == {"IJBC", "tinyface"}
    assert bench["IJBC"]["metric"] == "tar@far=1e-4" and bench["IJBC"]["config"] == "Norm:False_Det:True"
    assert bench["tinyface"]["metric"] == "rank-1" and bench["tinyface"]["probes"] == 6
    for r in bench.values():
        assert r["step"] == 2 and math.isfinite(r["value"]) and 0.0 <= r["value"] <= 1.0
    assert metrics.scalars(bench["IJBC"]) == {"eval/IJBC/tar@far=1e-4": bench["IJBC"]["value"]}
    assert metrics.scalars(bench["tinyface"]) == {"eval/tinyface/rank-1": bench["tinyface"]["value"]}
    out = capsys.readouterr()
    assert "step 2 (epoch 0): IJBC tar@far=1e-4 " in out.out + out.err


def test_missing_benchmark_data_stops_the_run_at_start_naming_the_key(tmp_path, capsys):
    data = tmp_path / "facerec_val"
    write_tinyface(data)  # TinyFace present, IJB-C not
    run = tmp_path / "run"
    code = cli.run(["--config", str(_config(tmp_path)), f"output={run}", "eval.benchmarks=[IJBC,tinyface]",
                    f"eval.ijb_root={data}", f"eval.tinyface_root={data}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "IJBC" in err and "eval.ijb_root" in err and "eval.benchmarks=[tinyface]" in err
    assert not any(run.glob("checkpoint*"))
    with pytest.raises(verify.MissingTargetError, match=r"tinyface: eval.tinyface_root is not set"):
        verify.check_benchmarks(EvalConfig(benchmarks=("tinyface",)))
    with pytest.raises(verify.MissingTargetError, match=r"eval.ijb_root .*nowhere does not exist"):
        verify.check_benchmarks(EvalConfig(benchmarks=("IJBC",), ijb_root=str(tmp_path / "nowhere")))


def test_benchmark_names_are_the_evaluators():
    (names,) = {typing.get_args(a) for a in typing.get_args(typing.get_type_hints(EvalConfig)["benchmarks"])
                if typing.get_args(a)}
    assert set(names) == {t for t in targets.ALL_TARGETS if targets.kind(t) != "verification"}
    with pytest.raises(configs.ConfigError, match="eval.benchmarks"):
        EvalConfig(benchmarks=("IJBC", "IJBC"))


def test_the_seed_config_asks_for_ijbc_and_tinyface_with_roots_to_set(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the roots are relative, as the .bin targets: no data/facerec_val here
    seed = configs.load(ROOT / "configs" / "ms1mv2_mbf_cvlface_adafacekd_geom.yaml").eval
    assert seed.benchmarks == ("IJBC", "tinyface")
    assert (seed.ijb_root, seed.tinyface_root) == ("data/facerec_val", "data/facerec_val")
    with pytest.raises(verify.MissingTargetError, match=r"IJBC: eval.ijb_root data/facerec_val does not exist; "
                                                        r"tinyface: eval.tinyface_root data/facerec_val does not"):
        verify.check_benchmarks(seed)
