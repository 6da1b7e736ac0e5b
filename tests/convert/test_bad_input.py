"""Each bad input stops the CLI with one line naming the file (and offset or key), status 2, no manifest."""
import math
import os
import shutil
import struct

import numpy as np
import pytest
import simplejpeg

from convert.cli import main
from convert.recordio import IRHeader, RecordWriter, pack
from tests.convert.datasets import IDENTITIES, PER_IDENTITY

N = IDENTITIES * PER_IDENTITY  # the synthetic .rec: header at key 0, images at keys 1..N, identity records after


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
    paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(synth_folder) for f in fs if f.endswith(".jpg"))[:6]
    return [open(p, "rb").read() for p in paths]


def _assert_failed(capsys, out, argv, *fragments):
    code, err = _run(capsys, *argv)
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("python -m convert: error: "), err
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
        "labels.npy", "manifest.json", "train-000000.idx", "train-000000.tar"]


def _with_header(tmp_path, synth_rec, label):
    """A copy of the synthetic insightface .rec whose header record (key 0) holds the two float32 `label`s."""
    src = tmp_path / "src"
    shutil.copytree(synth_rec, src)
    rec = src / "train.rec"
    data = bytearray(rec.read_bytes())
    # Record 0 starts the file: magic and length (8 bytes), the IRHeader (24 bytes), then its 2 float32 labels.
    data[32:40] = struct.pack("<ff", *label)
    rec.write_bytes(bytes(data))
    return src


def test_absurd_header_range_fails_before_listing_keys(capsys, tmp_path, synth_rec):
    """A billion announced image keys: refused from the index size, never by listing a billion missing keys."""
    src = _with_header(tmp_path, synth_rec, (1e9, 1e9 + IDENTITIES))
    _assert_failed(capsys, tmp_path / "o", ["rec", str(src), str(tmp_path / "o")], str(src / "train.rec"),
                   "image keys 1..999999999", f"holds {N + IDENTITIES + 1} records")


@pytest.mark.parametrize("label", [(math.inf, math.inf), (math.nan, N + IDENTITIES + 1.0), (-3.0, 5.0), (2.5, 9.0)],
                         ids=["inf", "nan", "negative", "fraction"])
def test_header_label_that_is_no_key_is_one_line(capsys, tmp_path, synth_rec, label):
    src = _with_header(tmp_path, synth_rec, label)
    shown = str(float(np.float32(label[0])))
    _assert_failed(capsys, tmp_path / "o", ["rec", str(src), str(tmp_path / "o")], str(src / "train.rec"),
                   "header record (key 0)", f"holds {shown}")


@pytest.mark.parametrize("label, fragment", [
    ((31.0, N + IDENTITIES + 1.0), f"keys 31..{N} hold images too: {N - 30} images would be left out"),
    ((31.0, 31.0 + IDENTITIES), f"keys 31..{N} hold images too"),
    ((N + 5.0, N + IDENTITIES + 1.0), f"keys {N + 1}..{N + 4} are identity records (no image): 4 images would be invented"),
    ((N + 1.0, N + IDENTITIES - 2.0), f"announces {N + IDENTITIES - 2}: the header, {N} images and {IDENTITIES - 3} identity"),
], ids=["first-identity-key-too-low", "both-keys-too-low", "first-identity-key-too-high", "records-past-the-end"])
def test_header_that_does_not_describe_the_records_is_refused(capsys, tmp_path, synth_rec, label, fragment):
    """A header that would leave images out (or read identity records as images) is refused, with counts."""
    src = _with_header(tmp_path, synth_rec, label)
    _assert_failed(capsys, tmp_path / "o", ["rec", str(src), str(tmp_path / "o")], str(src), fragment)


def test_idx_with_two_keys_at_one_offset(capsys, tmp_path, jpegs):
    """One image would be read twice and another never: refused, naming both lines."""
    offsets = _plain_rec(tmp_path / "src", jpegs)
    idx = tmp_path / "src" / "train.idx"
    lines = idx.read_text().splitlines()
    lines[4] = f"4\t{offsets[3]}"
    idx.write_text("\n".join(lines) + "\n")
    _assert_failed(capsys, tmp_path / "o", ["rec", str(tmp_path / "src"), str(tmp_path / "o")],
                   f"{idx}:5: key 4 has offset {offsets[3]}, the offset of key 3 (line 4)")


@pytest.mark.parametrize("garbage, fragment", [
    (b"0\t0\n1\t\xff\xfe\x00\x01\n", ":2: byte 0xff at column 3 is not text"),
    (b"\x00" * 10000, ":1: line longer than 4096 bytes"),
], ids=["binary", "no-newline"])
def test_idx_holding_binary_garbage(capsys, tmp_path, jpegs, garbage, fragment):
    _plain_rec(tmp_path / "src", jpegs)
    idx = tmp_path / "src" / "train.idx"
    idx.write_bytes(garbage)
    _assert_failed(capsys, tmp_path / "o", ["rec", str(tmp_path / "src"), str(tmp_path / "o")], f"{idx}{fragment}")


@pytest.mark.parametrize("where", ["file", "folder"])
def test_name_that_is_not_utf8(capsys, tmp_path, jpegs, where):
    """A file or identity folder named in another encoding (Latin-1 here) is refused by name, escaped."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "1.jpg").write_bytes(jpegs[0])
    folder = os.path.join(os.fsencode(src), b"a" if where == "file" else b"Jos\xe9")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, b"Ren\xe9.jpg" if where == "file" else b"2.jpg"), "wb") as f:
        f.write(jpegs[1])
    bad = "a/Ren\\xe9.jpg" if where == "file" else "Jos\\xe9"
    _assert_failed(capsys, tmp_path / "o", ["folder", str(src), str(tmp_path / "o")],
                   f"{src}/{bad}: name is not valid UTF-8")


def _jpeg_claiming(height, width):
    """A small JPEG whose frame header (SOF0) claims height x width: its size reads as that, its data does not."""
    data = bytearray(simplejpeg.encode_jpeg(np.zeros((16, 16, 3), np.uint8), quality=90))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_huge_jpeg_is_refused_from_its_header(capsys, tmp_path, jpegs):
    """12000x12000 (1 GB decoded and resized): refused before anything is decoded, naming the file and the flag."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "1.jpg").write_bytes(jpegs[0])
    (src / "a" / "2.jpg").write_bytes(_jpeg_claiming(12000, 12000))
    _assert_failed(capsys, tmp_path / "o", ["folder", str(src), str(tmp_path / "o"), "--resize"],
                   str(src / "a" / "2.jpg"), "image is 12000x12000 = 144000000 pixels, more than the limit of 89478485",
                   "--max-pixels 144000000")


def test_max_pixels_sets_the_cap(capsys, tmp_path, jpegs):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "1.jpg").write_bytes(jpegs[0])
    (src / "a" / "2.jpg").write_bytes(simplejpeg.encode_jpeg(np.zeros((200, 150, 3), np.uint8), quality=90))
    argv = ["folder", str(src), str(tmp_path / "o"), "--resize"]
    _assert_failed(capsys, tmp_path / "o", argv + ["--max-pixels", "20000"], str(src / "a" / "2.jpg"),
                   "image is 200x150 = 30000 pixels, more than the limit of 20000")
    assert _run(capsys, *argv, "--max-pixels", "30000")[0] == 0


@pytest.mark.parametrize("argv, fragment", [
    (["--samples-per-shard", "0"], "samples_per_shard must be >= 1, found 0"),
    (["--max-pixels", "0"], "max_pixels must be >= 1, found 0"),
], ids=["samples-per-shard", "max-pixels"])
def test_option_out_of_range_is_one_line(capsys, tmp_path, synth_rec, argv, fragment):
    _assert_failed(capsys, tmp_path / "o", ["rec", synth_rec, str(tmp_path / "o"), *argv], fragment)


def test_every_convert_and_bench_error_is_an_input_error():
    from bench.settings import BenchError
    from convert.converter import OptionError, OutputError
    from common.errors import InputError
    from convert.image_check import CorruptImageError, ImageSizeError
    from convert.manifest import ManifestError
    from convert.recordio import RecordIOError
    from convert.sources import SourceError
    from convert.synthetic import SynthError

    for cls in (OptionError, OutputError, CorruptImageError, ImageSizeError, ManifestError, RecordIOError,
                SourceError, SynthError):
        assert issubclass(cls, InputError) and issubclass(cls, ValueError), cls
    assert issubclass(BenchError, InputError) and issubclass(BenchError, RuntimeError)
