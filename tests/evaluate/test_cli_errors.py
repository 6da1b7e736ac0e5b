"""python -m evaluate when things go wrong: one line on stderr naming the file (and the position in it), exit
status 2, checked before the work where it can be, and nothing half-written."""
import csv
import errno
import os
import pickle
import re

import pytest
import torch

from common.files import output_lock
import models
from evaluate import cli, output_check
from tests.evaluate.conftest import TINY_EMB, TINY_NET, pair_set, write_bin

PAIRS = 60  # 120 images: "image 3 of 120"


def _checkpoint(path, step, *, nan=False):
    torch.manual_seed(step)
    model = models.build(TINY_NET, embedding_size=TINY_EMB)
    state = model.state_dict()
    if nan:
        key = next(k for k, v in state.items() if v.is_floating_point() and v.dim() > 1)
        state[key] = state[key].clone()
        state[key].view(-1)[0] = float("nan")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"student": state, "step": step, "epoch": 0,
                "config": {"model": {"name": TINY_NET, "embedding_size": TINY_EMB}}}, path)
    return path


def _args(*extra):
    return ["--device", "cpu", "--batch-size", "16", "--quiet", *extra]


def _error_line(capsys, prog="python -m evaluate") -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"{prog}: error: "), err
    return err


@pytest.fixture(scope="module")
def images():
    return pair_set(PAIRS)


@pytest.fixture
def no_evaluation(monkeypatch):
    """Fail the test if any target is run: the error must come before the work."""
    def refuse(*args, **kwargs):
        raise AssertionError("a target was evaluated")

    monkeypatch.setattr(cli, "run_target", refuse)


def _damaged(jpeg: bytes, damage: str) -> bytes:
    return {"empty": b"",
            "text": b"not an image at all",
            "header": jpeg[:jpeg.index(b"\xff\xda") // 2],  # cut in its tables: DALI's parser could crash
            "scan": jpeg[:len(jpeg) // 2]}[damage]  # header intact, scan cut short: DALI refuses the batch


@pytest.mark.parametrize("damage, reason", [("empty", r"empty: 0 bytes"), ("text", r"not a JPEG, PNG"),
                                            ("header", r"JPEG header does not parse"),
                                            ("scan", r"OSError: image file is truncated")])
def test_image_that_does_not_decode_is_named_by_file_and_position(tmp_path, images, capsys, damage, reason):
    val = tmp_path / "val"
    val.mkdir()
    pictures, issame = list(images[0]), images[1]
    pictures[3] = _damaged(pictures[3], damage)
    write_bin(val / "lfw.bin", pictures, issame)
    ckpt = _checkpoint(tmp_path / "a.pt", 1)
    assert cli.main(_args("--checkpoint", str(ckpt), "--val-data", str(val))) == 2
    err = _error_line(capsys)
    assert f"{val / 'lfw.bin'}: image 3 of 120 does not decode (" in err
    assert re.search(reason, err)
    assert not (tmp_path / "reports").exists() or not list((tmp_path / "reports").iterdir())


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("kind, message", [
    ("malicious", r"lfw\.bin: byte \d+: the pickle asks for the global (posix|os)\.system"),
    ("truncated", r"lfw\.bin: truncated: reading stopped at byte 5000 of 5000, before the pickle's end"),
    ("garbage", r"lfw\.bin: byte \d+: not a readable pickle \("),
    ("not pairs", r"lfw\.bin: expected a pickle of \(bins, issame_list\), found dict"),
    ("uneven", r"lfw\.bin: expected 2 images per pair = 120 images for 60 issame flags, found 119"),
])
def test_bin_that_is_no_pair_set_is_one_line(tmp_path, images, capsys, kind, message):
    val = tmp_path / "val"
    val.mkdir()
    marker = tmp_path / "pwned"
    path = val / "lfw.bin"
    if kind == "malicious":
        with open(path, "wb") as f:
            pickle.dump(([_Evil(marker)] + list(images[0][1:]), images[1]), f, protocol=2)
    elif kind == "truncated":
        write_bin(path, *images)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "garbage":
        path.write_bytes(b"\x80\x02" + bytes(range(256)) * 8)
    elif kind == "not pairs":
        path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    else:
        write_bin(path, images[0][:-1], images[1])
    assert cli.main(_args("--checkpoint", str(_checkpoint(tmp_path / "a.pt", 1)), "--val-data", str(val))) == 2
    assert re.search(message, _error_line(capsys))
    assert not marker.exists()


def test_set_too_small_for_the_metric_names_its_file(tmp_path, capsys):
    val = tmp_path / "val"
    val.mkdir()
    write_bin(val / "lfw.bin", *pair_set(4))  # 10 folds need 10 pairs
    assert cli.main(_args("--checkpoint", str(_checkpoint(tmp_path / "a.pt", 1)), "--val-data", str(val))) == 2
    assert f"{val / 'lfw.bin'}: lfw: 4 pairs: the 10-fold metric needs at least 10" in _error_line(capsys)


@pytest.mark.parametrize("flag", ["--val-data", "--ijb-root", "--tinyface-root"])
def test_data_root_that_does_not_exist_fails_before_loading(tmp_path, capsys, monkeypatch, flag):
    monkeypatch.setattr(models, "load_backbone", lambda *a, **k: pytest.fail("the checkpoint was loaded"))
    missing = tmp_path / "nowhere"
    assert cli.main(_args("--checkpoint", str(tmp_path / "a.pt"), flag, str(missing))) == 2
    assert f"{missing}: {flag} does not exist" in _error_line(capsys)
    batch = ["batch", "--checkpoint-dir", str(tmp_path), *_args(flag, str(missing))]
    _checkpoint(tmp_path / "a.pt", 1)
    assert cli.main(batch) == 2
    assert f"{missing}: {flag} does not exist" in _error_line(capsys, "python -m evaluate batch")
    assert not (tmp_path / "reports").exists()


def test_data_root_without_any_set_is_nothing_to_evaluate(tmp_path, capsys, no_evaluation):
    (tmp_path / "val").mkdir()
    assert cli.main(_args("--checkpoint", str(_checkpoint(tmp_path / "a.pt", 1)),
                          "--val-data", str(tmp_path / "val"))) == 2
    assert f"{tmp_path / 'val'}: nothing to evaluate" in _error_line(capsys)
    assert not (tmp_path / "reports").exists()


def test_output_that_cannot_be_written_fails_before_the_evaluation(tmp_path, val_data, capsys, no_evaluation):
    ckpt = _checkpoint(tmp_path / "a.pt", 1)
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "report.json"  # its folder is a file: not even root can write there
    assert cli.main(_args("--checkpoint", str(ckpt), "--val-data", str(val_data), "--output", str(out))) == 2
    assert f"{tmp_path / 'file'}: cannot write the report here" in _error_line(capsys)
    folder = tmp_path / "out"
    folder.mkdir()
    assert cli.main(_args("--checkpoint", str(ckpt), "--val-data", str(val_data), "--output", str(folder))) == 2
    assert f"{folder}: the report would replace this directory" in _error_line(capsys)


def test_default_reports_folder_that_cannot_be_written_fails_before_the_evaluation(tmp_path, val_data, capsys,
                                                                                  no_evaluation):
    run = tmp_path / "run"
    _checkpoint(run / "checkpoints" / "step-000000010.pt", 10)
    (run / "checkpoints" / "latest").write_text("step-000000010.pt\n")
    (run / "reports").write_text("a file where the reports folder goes")
    assert cli.main(_args("--checkpoint", str(run), "--val-data", str(val_data))) == 2
    assert f"{run / 'reports'}: cannot write the report here" in _error_line(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_read_only_output_folder_fails_before_the_evaluation(tmp_path, val_data, capsys, no_evaluation):
    ckpt = _checkpoint(tmp_path / "a.pt", 1)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code = cli.main(_args("--checkpoint", str(ckpt), "--val-data", str(val_data),
                              "--output", str(locked / "r.json")))
    finally:
        locked.chmod(0o755)
    assert code == 2 and f"{locked}: cannot write the report here" in _error_line(capsys)


def test_read_only_file_system_fails_before_the_evaluation(tmp_path, val_data, capsys, no_evaluation, monkeypatch):
    # What root meets on a read-only mount, where a permission test passes and only a write tells.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(output_check.tempfile, "NamedTemporaryFile", read_only)
    ckpt = _checkpoint(tmp_path / "a.pt", 1)
    assert cli.main(_args("--checkpoint", str(ckpt), "--val-data", str(val_data))) == 2
    assert f"{tmp_path / 'reports'}: cannot write the report here (Read-only file system)" in _error_line(capsys)


def test_nan_checkpoint_is_one_line_naming_the_tensor(tmp_path, val_data, capsys, no_evaluation):
    ckpt = _checkpoint(tmp_path / "nan.pt", 1, nan=True)
    assert cli.main(_args("--checkpoint", str(ckpt), "--val-data", str(val_data))) == 2
    err = _error_line(capsys)
    assert "nan.pt" in err and "non-finite" in err
    assert not (tmp_path / "reports").exists()


def test_batch_goes_on_past_a_failed_checkpoint_and_fails_at_the_end(tmp_path, val_data, capsys):
    run = tmp_path / "run"
    for step in (5, 10, 15):
        _checkpoint(run / "checkpoints" / f"step-{step:09d}.pt", step, nan=step == 10)
    batch = ["batch", "--checkpoint-dir", str(run), *_args("--val-data", str(val_data))]
    assert cli.main(batch) == 2
    captured = capsys.readouterr()
    summary = run / "reports" / "summary.csv"
    assert "evaluated 2, already done 0, failed 1" in captured.out
    assert "failed " in captured.out and "step-000000010.pt" in captured.out
    assert captured.err == (f"python -m evaluate batch: error: {summary}: 1 of 3 checkpoint(s) could not be "
                            f"evaluated: step-000000010.pt (see their error column)\n")
    assert sorted(p.name for p in (run / "reports").glob("*.json")) == ["step-000000005.json", "step-000000015.json"]
    rows = list(csv.DictReader(open(summary)))
    assert [r["step"] for r in rows] == ["5", "", "15"]
    assert rows[1]["checkpoint"].endswith("step-000000010.pt") and "non-finite" in rows[1]["error"]
    assert rows[0]["error"] == "" and 0 <= float(rows[0]["lfw/acc"]) <= 1
    # the failed checkpoint has no report, so the next run tries it again (and fails again)
    assert cli.main(batch) == 2
    assert "evaluated 0, already done 2, failed 1" in capsys.readouterr().out


def test_second_batch_job_on_one_folder_is_refused(tmp_path, val_data, capsys, monkeypatch):
    run = tmp_path / "run"
    _checkpoint(run / "checkpoints" / "step-000000005.pt", 5)
    monkeypatch.setattr(cli, "evaluate_checkpoint", lambda p, a: pytest.fail("the second job evaluated"))
    batch = ["batch", "--checkpoint-dir", str(run), *_args("--val-data", str(val_data))]
    with output_lock(run / "reports", "python -m evaluate batch (the first job)"):
        assert cli.main(batch) == 2
        err = _error_line(capsys, "python -m evaluate batch")
    assert f"{run / 'reports'}: another job is writing to this folder (python -m evaluate batch (the first job)" in err
    assert not (run / "reports" / "summary.csv").exists()


def test_batch_names_a_report_it_cannot_read(tmp_path, val_data, capsys, monkeypatch):
    run = tmp_path / "run"
    _checkpoint(run / "checkpoints" / "step-000000005.pt", 5)
    (run / "reports").mkdir()
    (run / "reports" / "step-000000005.json").write_text("{not json")
    monkeypatch.setattr(cli, "evaluate_checkpoint", lambda p, a: pytest.fail("a done checkpoint was evaluated"))
    assert cli.main(["batch", "--checkpoint-dir", str(run), *_args("--val-data", str(val_data))]) == 2
    err = _error_line(capsys, "python -m evaluate batch")
    assert f"{run / 'reports' / 'step-000000005.json'}: cannot read this report" in err


def test_batch_size_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(_args("--checkpoint", str(tmp_path / "a.pt"), "--batch-size", "0"))
    assert info.value.code == 2 and "expected a whole number >= 1, found '0'" in capsys.readouterr().err

