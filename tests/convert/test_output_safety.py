"""What a conversion writes is never shared, overwritten unasked, half-written, or described wrongly.

One job per output folder (common.files.output_lock), files of another dataset refused unless --overwrite, a full
disk reported as one line naming the file (with no temporary left, and the rerun resuming), and a manifest
edited by hand written again rather than trusted.
"""
import builtins
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import files
from common.files import LOCK_NAME, output_lock
from convert import shard_writer
from convert.cli import main
from convert.manifest import Manifest

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, *argv):
    extra = ["--quiet"] if argv[0] in ("rec", "folder") else []
    code = main([*argv, "--workers", "1", *extra]) if argv[0] != "verify" else main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err.strip()


def _one_line_error(code, err, *fragments):
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("python -m convert: error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def _hold_lock(folder):
    """A separate process holding the lock on `folder` until it is killed."""
    code = ("import sys, time\nfrom common.files import output_lock\n"
            "with output_lock(sys.argv[1], 'python -m convert rec elsewhere'):\n"
            "    print('locked', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_conversion_into_one_folder_is_refused(capsys, tmp_path, synth_rec):
    out = tmp_path / "o"
    with output_lock(out, "python -m convert rec first.rec o"):
        code, err = _run(capsys, "rec", synth_rec, str(out))
    _one_line_error(code, err, str(out), "another job is writing to this folder",
                    "python -m convert rec first.rec o", f"pid {os.getpid()}")
    assert os.listdir(out) == [LOCK_NAME]  # nothing written


def test_lock_of_a_killed_conversion_does_not_block_its_resume(capsys, tmp_path, synth_rec):
    out = tmp_path / "o"
    holder = _hold_lock(out)
    try:
        code, err = _run(capsys, "rec", synth_rec, str(out))
        _one_line_error(code, err, str(out), "python -m convert rec elsewhere", f"pid {holder.pid}")
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the lock file stays
        holder.wait()
    assert os.listdir(out) == [LOCK_NAME]
    code, err = _run(capsys, "rec", synth_rec, str(out))
    assert code == 0, err
    # The lock file is neither a stray file nor a shard: verify and a rerun ignore it.
    assert (out / LOCK_NAME).exists() and _run(capsys, "verify", str(out))[0] == 0
    assert _run(capsys, "rec", synth_rec, str(out))[0] == 0


def test_synth_into_a_locked_folder_is_refused(capsys, tmp_path):
    out = tmp_path / "s"
    with output_lock(out, "python -m convert synth s"):
        code, err = _run(capsys, "synth", str(out), "--identities", "2", "--per-identity", "2")
    _one_line_error(code, err, str(out), "python -m convert synth s")
    assert os.listdir(out) == [LOCK_NAME]


@pytest.mark.parametrize("fmt, existing", [("rec", "train.rec"), ("folder", "000001")])
def test_synth_refuses_a_dataset_already_there_unless_overwrite(capsys, tmp_path, fmt, existing):
    out = tmp_path / "s"
    argv = ["synth", str(out), "--identities", "2", "--per-identity", "2", "--format", fmt]
    assert _run(capsys, *argv)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != LOCK_NAME}
    code, err = _run(capsys, *argv[:-3], "3", "--format", fmt)
    _one_line_error(code, err, str(out), existing, "--overwrite")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != LOCK_NAME} == before
    assert _run(capsys, *argv[:-3], "3", "--format", fmt, "--overwrite")[0] == 0
    if fmt == "rec":
        assert (out / "property").read_text() == "2,112,112" and (out / "train.rec").read_bytes() != before[out / "train.rec"]
    else:  # the identity folders of the first run are replaced, not mixed with the new images
        assert sorted(p.name for p in (out / "000000").iterdir()) == ["0000.jpg", "0001.jpg", "0002.jpg"]


def test_stray_shard_in_output_is_refused_unless_overwrite(capsys, tmp_path, synth_rec):
    out = tmp_path / "o"
    out.mkdir()
    (out / "train-000000.tar").write_bytes(b"someone else's shard")
    code, err = _run(capsys, "rec", synth_rec, str(out))
    _one_line_error(code, err, str(out), "train-000000.tar", "--overwrite")
    assert (out / "train-000000.tar").read_bytes() == b"someone else's shard"
    assert not (out / "manifest.json").exists()
    assert _run(capsys, "rec", synth_rec, str(out), "--overwrite")[0] == 0
    assert _run(capsys, "verify", str(out))[0] == 0


def test_unreadable_state_is_refused_unless_overwrite(capsys, tmp_path, synth_rec):
    out = tmp_path / "o"
    out.mkdir()
    (out / ".convert-state.json").write_text("{not json")
    code, err = _run(capsys, "rec", synth_rec, str(out))
    _one_line_error(code, err, str(out / ".convert-state.json"), "unreadable state", "--overwrite")
    assert _run(capsys, "rec", synth_rec, str(out), "--overwrite")[0] == 0


def test_rerun_rewrites_a_hand_edited_manifest(capsys, tmp_path, synth_rec):
    out = tmp_path / "o"
    assert _run(capsys, "rec", synth_rec, str(out))[0] == 0
    original = (out / "manifest.json").read_bytes()
    edited = json.loads(original)
    edited["num_classes"] = 1000
    (out / "manifest.json").write_text(json.dumps(edited))
    code, err = _run(capsys, "rec", synth_rec, str(out))
    assert code == 0
    assert "manifest.json: was edited since this conversion wrote it; it says" in err and "1000 classes" in err
    assert (out / "manifest.json").read_bytes() == original and Manifest.load(out).num_classes == 12


class _FullDisk:
    """A file whose every write fails as on a full disk."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _full_disk_for(name):
    """An `open` that gives a _FullDisk for writing the temporary file of `name`, the real file otherwise."""

    def fake_open(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        return _FullDisk(f) if "w" in mode and os.path.basename(path).startswith(f".{name}.") else f

    return fake_open


def _temporaries(out):
    return [n for n in os.listdir(out) if ".tmp" in n]


@pytest.mark.parametrize("module, name", [(shard_writer, "train-000001.tar"), (files, "manifest.json")],
                         ids=["shard", "manifest"])
def test_full_disk_names_the_file_leaves_no_temporary_and_resumes(capsys, tmp_path, synth_rec, monkeypatch,
                                                                  module, name):
    out = tmp_path / "o"
    monkeypatch.setattr(module, "open", _full_disk_for(name), raising=False)
    code, err = _run(capsys, "rec", synth_rec, str(out), "--samples-per-shard", "16")
    _one_line_error(code, err, str(out / name), "No space left on device", "no temporary file is left")
    assert _temporaries(out) == [] and not (out / "manifest.json").exists()
    monkeypatch.undo()
    assert _run(capsys, "rec", synth_rec, str(out), "--samples-per-shard", "16")[0] == 0
    assert _temporaries(out) == [] and _run(capsys, "verify", str(out))[0] == 0
