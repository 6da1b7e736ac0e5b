"""Atomic, resumable conversion (killed midway -> identical result) and `verify` catching damage."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import convert
from convert import converter, shard_writer
from convert.cli import main
from tests.convert.datasets import tree_bytes


class Killed(BaseException):
    pass


def test_resume_after_kill_midway_is_byte_identical(synth_rec, tmp_path, monkeypatch):
    convert.convert_rec(synth_rec, tmp_path / "ref", samples_per_shard=8, workers=1, progress=False)

    # Die in the middle of the fourth shard the way a killed process would: no cleanup at all.
    calls = {"n": 0}
    real_write = shard_writer.ShardWriter.write

    def dying_write(self, *args):
        calls["n"] += 1
        if calls["n"] == 3 * 8 + 5:
            raise Killed()
        return real_write(self, *args)

    monkeypatch.setattr(shard_writer.ShardWriter, "write", dying_write)
    monkeypatch.setattr(shard_writer.ShardWriter, "abort", lambda self: None)
    with pytest.raises(Killed):
        convert.convert_rec(synth_rec, tmp_path / "o", samples_per_shard=8, workers=1, progress=False)
    monkeypatch.undo()
    names = os.listdir(tmp_path / "o")
    assert "manifest.json" not in names and f".train-000003.tar.{os.getpid()}.tmp" in names
    assert "train-000003.tar" not in names
    state = json.load(open(tmp_path / "o" / converter.STATE_NAME))
    assert sorted(state["shards"]) == [f"train-{k:06d}.tar" for k in range(3)]

    # A complete shard damaged since is found by its checksum and written again.
    damaged = tmp_path / "o" / "train-000001.tar"
    data = bytearray(damaged.read_bytes())
    data[2000] ^= 0xFF
    damaged.write_bytes(bytes(data))
    untouched = os.stat(tmp_path / "o" / "train-000000.tar").st_mtime_ns

    convert.convert_rec(synth_rec, tmp_path / "o", samples_per_shard=8, workers=1, progress=False)
    assert os.stat(tmp_path / "o" / "train-000000.tar").st_mtime_ns == untouched  # skipped, not rewritten
    assert tree_bytes(tmp_path / "o") == tree_bytes(tmp_path / "ref")
    # Running the finished command again changes nothing.
    convert.convert_rec(synth_rec, tmp_path / "o", samples_per_shard=8, workers=1, progress=False)
    assert tree_bytes(tmp_path / "o") == tree_bytes(tmp_path / "ref")


def test_real_sigkill_then_rerun_is_byte_identical(synth_rec, tmp_path):
    """SIGKILL a CLI conversion once it has finished a shard; the rerun must equal an uninterrupted run."""
    convert.convert_rec(synth_rec, tmp_path / "ref", samples_per_shard=1, workers=1, progress=False)
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "convert", "rec", synth_rec, str(out), "--samples-per-shard", "1",
           "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / converter.STATE_NAME
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        try:
            if json.loads(state.read_text())["shards"]:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main(["rec", synth_rec, str(out), "--samples-per-shard", "1", "--workers", "1", "--quiet"]) == 0
    assert tree_bytes(out) == tree_bytes(tmp_path / "ref")


def test_verify_catches_flipped_byte_and_bad_index(synth_rec, tmp_path, capsys):
    out = tmp_path / "o"
    convert.convert_rec(synth_rec, out, samples_per_shard=16, workers=1, progress=False)
    assert convert.verify(out) == [] and main(["verify", str(out)]) == 0

    shard = out / "train-000002.tar"
    good = shard.read_bytes()
    data = bytearray(good)
    jpg_offset = int((out / "train-000002.idx").read_text().splitlines()[5].split()[5])
    data[jpg_offset + 100] ^= 0x01  # inside an image: only the checksum can tell
    shard.write_bytes(bytes(data))
    problems = convert.verify(out)
    assert len(problems) == 1 and "train-000002.tar" in problems[0] and "sha256" in problems[0]
    data = bytearray(good)
    data[jpg_offset - 512 + 124] ^= 0x01  # in the member's tar header (its size field)
    shard.write_bytes(bytes(data))
    problems = convert.verify(out)
    assert problems and all("train-000002" in p for p in problems)
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    assert "train-000002.tar" in capsys.readouterr().err
    shard.write_bytes(good)

    idx = out / "train-000001.idx"
    lines = idx.read_text().splitlines()
    parts = lines[3].split()
    parts[5] = str(int(parts[5]) + 512)  # the image member's offset
    lines[3] = " ".join(parts)
    idx.write_text("\n".join(lines) + "\n")
    problems = convert.verify(out)
    assert len(problems) == 1 and "train-000001.idx:4" in problems[0]


def test_verify_catches_label_out_of_range(synth_rec, tmp_path):
    out = tmp_path / "o"
    m = convert.convert_rec(synth_rec, out, samples_per_shard=64, workers=1, progress=False)
    manifest = json.load(open(out / "manifest.json"))
    manifest["num_classes"] = 3  # labels 3.. are now out of range
    json.dump(manifest, open(out / "manifest.json", "w"))
    problems = convert.verify(out)
    assert problems and all("outside 0..2" in p for p in problems) and m.num_classes == 12
