"""Each bad input stops the CLI with one line naming the file (and offset or key), status != 0, no manifest."""
import os
import shutil

import pytest

from convert.cli import main
from convert.recordio import IRHeader, RecordWriter, pack


def _run(capsys, *argv):
    code = main([*argv, "--workers", "1", "--quiet"]) if argv[0] in ("rec", "folder") else main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def _plain_rec(folder, jpegs):
    """An im2rec-style .rec (no header record): every record an image."""
    os.makedirs(folder, exist_ok=True)
    with RecordWriter(os.path.join(folder, "train.rec"), os.path.join(folder, "train.idx")) as w:
        offsets = [w.write_idx(k, pack(IRHeader(0, float(k % 3), k, 0), j)) for k, j in enumerate(jpegs)]
    return offsets


@pytest.fixture
def jpegs(synth_folder):
    paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(synth_folder) for f in fs)[:6]
    return [open(p, "rb").read() for p in paths]


def _assert_failed(capsys, out, argv, *fragments):
    code, err = _run(capsys, *argv)
    assert code != 0
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    return err


def test_plain_rec_converts(capsys, tmp_path, jpegs):
    _plain_rec(tmp_path / "src", jpegs)
    code, _ = _run(capsys, "rec", str(tmp_path / "src"), str(tmp_path / "o"))
    assert code == 0 and os.path.exists(tmp_path / "o" / "manifest.json")


def test_truncated_rec(capsys, tmp_path, jpegs):
    _plain_rec(tmp_path / "src", jpegs)
    rec = tmp_path / "src" / "train.rec"
    rec.write_bytes(rec.read_bytes()[:-100])
    _assert_failed(capsys, tmp_path / "o", ["rec", str(tmp_path / "src"), str(tmp_path / "o")],
                   str(rec), "truncated record at offset", "key 5")


def test_bad_magic(capsys, tmp_path, jpegs):
    offsets = _plain_rec(tmp_path / "src", jpegs)
    rec = tmp_path / "src" / "train.rec"
    data = bytearray(rec.read_bytes())
    data[offsets[3] : offsets[3] + 4] = b"\x01\x02\x03\x04"
    rec.write_bytes(bytes(data))
    _assert_failed(capsys, tmp_path / "o", ["rec", str(rec), str(tmp_path / "o")],
                   str(rec), f"bad magic 0x04030201 at offset {offsets[3]}", "key 3")


def test_idx_offset_past_end(capsys, tmp_path, jpegs):
    _plain_rec(tmp_path / "src", jpegs)
    idx = tmp_path / "src" / "train.idx"
    lines = idx.read_text().splitlines()
    lines[2] = "2\t99999999"
    idx.write_text("\n".join(lines) + "\n")
    _assert_failed(capsys, tmp_path / "o", ["rec", str(tmp_path / "src"), str(tmp_path / "o")],
                   f"{idx}:3: key 2 at offset 99999999 lies past the end")


def test_idx_disagrees_with_rec(capsys, tmp_path, jpegs):
    offsets = _plain_rec(tmp_path / "src", jpegs)
    idx = tmp_path / "src" / "train.idx"
    lines = idx.read_text().splitlines()
    lines[4] = f"4\t{offsets[4] + 8}"  # inside the record, not at its start
    idx.write_text("\n".join(lines) + "\n")
    _assert_failed(capsys, tmp_path / "o", ["rec", str(tmp_path / "src"), str(tmp_path / "o")],
                   f"at offset {offsets[4] + 8}", "key 4", str(idx))


def test_idx_missing_keys_of_insightface_header(capsys, tmp_path, synth_rec):
    src = tmp_path / "src"
    shutil.copytree(synth_rec, src)
    idx = src / "train.idx"
    idx.write_text("".join(l for l in idx.read_text().splitlines(True) if not l.startswith("7\t")))
    _assert_failed(capsys, tmp_path / "o", ["rec", str(src), str(tmp_path / "o")], str(idx), "key 7 is not in the index")


def test_empty_source_folder(capsys, tmp_path):
    (tmp_path / "src").mkdir()
    _assert_failed(capsys, tmp_path / "o", ["folder", str(tmp_path / "src"), str(tmp_path / "o")],
                   str(tmp_path / "src"), "source folder is empty")


def test_identity_folder_without_images(capsys, tmp_path, jpegs):
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "1.jpg").write_bytes(jpegs[0])
    (tmp_path / "src" / "b").mkdir()
    (tmp_path / "src" / "b" / "notes.txt").write_text("no images here")
    _assert_failed(capsys, tmp_path / "o", ["folder", str(tmp_path / "src"), str(tmp_path / "o")],
                   str(tmp_path / "src" / "b"), "identity folder has no images")


def test_identity_folder_without_readable_images(capsys, tmp_path, jpegs):
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "1.jpg").write_bytes(jpegs[0])
    (tmp_path / "src" / "b").mkdir()
    (tmp_path / "src" / "b" / "1.jpg").write_bytes(jpegs[1][:500])
    argv = ["folder", str(tmp_path / "src"), str(tmp_path / "o")]
    _assert_failed(capsys, tmp_path / "o", argv, str(tmp_path / "src" / "b" / "1.jpg"), "does not decode")
    _assert_failed(capsys, tmp_path / "o", argv + ["--skip-corrupt"], str(tmp_path / "src" / "b"),
                   "identity folder has no readable images")


def test_output_path_is_a_file(capsys, tmp_path, synth_rec):
    (tmp_path / "o").write_text("a file")
    _assert_failed(capsys, tmp_path / "x", ["rec", synth_rec, str(tmp_path / "o")], str(tmp_path / "o"), "is a file")


def test_other_dataset_refused_unless_overwrite(capsys, tmp_path, synth_rec, synth_folder):
    out = str(tmp_path / "o")
    assert _run(capsys, "rec", synth_rec, out)[0] == 0
    code, err = _run(capsys, "folder", synth_folder, out)
    assert code != 0 and "holds another dataset's manifest" in err and synth_rec in err
    assert _run(capsys, "folder", synth_folder, out, "--overwrite")[0] == 0
    from convert.manifest import Manifest

    assert Manifest.load(out).source["kind"] == "folder"
    assert sorted(f for f in os.listdir(out) if not f.startswith(".")) == [
        "manifest.json", "train-000000.idx", "train-000000.tar"]
