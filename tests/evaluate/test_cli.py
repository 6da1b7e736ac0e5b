"""python -m evaluate: one checkpoint (run dir, file, bare state dict) and batch mode."""
import csv
import json

import pytest
import torch
import yaml

import models
from evaluate import cli
from tests.evaluate.conftest import TINY_EMB, TINY_NET, pair_set, write_bin


def _checkpoint(path, step, seed=0):
    torch.manual_seed(seed)
    model = models.build(TINY_NET, embedding_size=TINY_EMB)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"student": model.state_dict(), "step": step, "epoch": 0,
                "config": {"model": {"name": TINY_NET, "embedding_size": TINY_EMB}}}, path)
    return model


def _args(*extra):
    return ["--device", "cpu", "--batch-size", "16", "--quiet", *extra]


def test_run_directory_evaluates_latest_and_reports_skips(tmp_path, val_data, capsys):
    run = tmp_path / "run"
    _checkpoint(run / "checkpoints" / "step-000000010.pt", 10)
    (run / "checkpoints" / "latest").write_text("step-000000010.pt\n")
    assert cli.main(_args("--checkpoint", str(run), "--val-data", str(val_data))) == 0
    report = json.loads((run / "reports" / "step-000000010.json").read_text())
    assert report["step"] == 10 and report["network"] == TINY_NET
    assert set(report["results"]) == {"lfw"} and 0 <= report["results"]["lfw"]["acc"] <= 1
    assert "cfp_fp" in report["skipped"] and "IJBC" in report["skipped"] and "tinyface" in report["skipped"]
    out = capsys.readouterr().out
    assert "lfw" in out and "skipped IJBC: no --ijb-root given" in out


def test_other_bin_sets_under_val_data_are_found_and_can_be_named(tmp_path, val_data, capsys):
    write_bin(val_data / "held_out.bin", *pair_set(20))
    _checkpoint(tmp_path / "a.pt", 1)
    assert cli.main(_args("--checkpoint", str(tmp_path / "a.pt"), "--val-data", str(val_data))) == 0
    report = json.loads((tmp_path / "reports" / "a.json").read_text())
    assert set(report["results"]) == {"lfw", "held_out"}
    assert cli.main(_args("--checkpoint", str(tmp_path / "a.pt"), "--val-data", str(val_data),
                          "--targets", "held_out", "--output", str(tmp_path / "b.json"))) == 0
    assert set(json.loads((tmp_path / "b.json").read_text())["results"]) == {"held_out"}
    assert cli.main(_args("--checkpoint", str(tmp_path / "a.pt"), "--val-data", str(val_data),
                          "--targets", "nowhere")) == 2


def test_requested_target_without_data_fails(tmp_path, val_data, capsys):
    _checkpoint(tmp_path / "a.pt", 1)
    code = cli.main(_args("--checkpoint", str(tmp_path / "a.pt"), "--val-data", str(val_data),
                          "--targets", "lfw", "cplfw"))
    assert code == 2 and "cplfw" in capsys.readouterr().err


def test_bare_state_dict_needs_a_network(tmp_path, val_data, capsys):
    torch.save(models.build(TINY_NET, embedding_size=TINY_EMB).state_dict(), tmp_path / "backbone.pth")
    base = _args("--checkpoint", str(tmp_path / "backbone.pth"), "--val-data", str(val_data))
    assert cli.main(base) == 2 and "--network" in capsys.readouterr().err
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": TINY_NET, "embedding_size": TINY_EMB}}))
    out = tmp_path / "r.json"
    assert cli.main(base + ["--config", str(cfg), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["results"]["lfw"]["pairs"] == 20


def test_wrong_network_is_an_error(tmp_path, val_data, capsys):
    _checkpoint(tmp_path / "a.pt", 1)
    assert cli.main(_args("--checkpoint", str(tmp_path / "a.pt"), "--network", "mobilefacenet")) == 2
    assert "trained as" in capsys.readouterr().err


def test_batch_writes_rows_and_skips_done_checkpoints(tmp_path, val_data, capsys, monkeypatch):
    run = tmp_path / "run"
    _checkpoint(run / "checkpoints" / "step-000000005.pt", 5, seed=5)
    calls = []
    real = cli.evaluate_checkpoint
    monkeypatch.setattr(cli, "evaluate_checkpoint", lambda p, a: calls.append(p.name) or real(p, a))
    batch = ["batch", "--checkpoint-dir", str(run), *_args("--val-data", str(val_data))]
    assert cli.main(batch) == 0
    # a new checkpoint appears: only it is evaluated, and the CSV holds both
    _checkpoint(run / "checkpoints" / "step-000000010.pt", 10, seed=10)
    assert cli.main(batch) == 0
    assert calls == ["step-000000005.pt", "step-000000010.pt"]
    assert "evaluated 1, already done 1" in capsys.readouterr().out
    rows = list(csv.DictReader(open(run / "reports" / "summary.csv")))
    assert [r["step"] for r in rows] == ["5", "10"] and all(0 <= float(r["lfw/acc"]) <= 1 for r in rows)
    assert rows[0]["lfw/acc"] != "" and "lfw/xnorm" in rows[0]

    # --force evaluates both again (a stand-in evaluator here: the real one ran above)
    forced = []
    monkeypatch.setattr(cli, "evaluate_checkpoint", lambda p, a: forced.append(p.name) or json.loads(
        (run / "reports" / f"{p.stem}.json").read_text()))
    assert cli.main(batch + ["--force"]) == 0
    assert forced == ["step-000000005.pt", "step-000000010.pt"]


def test_module_entry_point_exits_nonzero_with_a_clear_error(tmp_path, monkeypatch, capsys):
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", ["evaluate", "--checkpoint", str(tmp_path / "nope.pt")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("evaluate", run_name="__main__")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "nope.pt" in err and "no such file" in err


def test_bad_device_is_a_one_line_error(tmp_path, val_data, capsys):
    _checkpoint(tmp_path / "a.pt", 1)
    code = cli.main(["--checkpoint", str(tmp_path / "a.pt"), "--val-data", str(val_data), "--device", "tpu:0",
                     "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("python -m evaluate: error: device") and "'tpu:0'" in err
    assert len(err.splitlines()) == 1
