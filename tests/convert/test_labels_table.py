"""The labels table beside the shards: written with the shards, listed in the manifest with its sha256,
checked by verify, rewritten by a rerun when damaged; a shard set converted before it existed is refused,
saying to convert it again with --overwrite, which does."""
import json
import os

import numpy as np
import pytest

from common.files import sha256_file
import convert
from convert.cli import main
from convert.labels_table import LABELS_NAME, labels_problem
from convert.manifest import StaleManifestError
from tests.convert.datasets import IDENTITIES, PER_IDENTITY, read_shards, tree_bytes


def _convert(synth_rec, out, **kw):
    return convert.convert_rec(synth_rec, out, samples_per_shard=16, workers=1, progress=False, **kw)


def test_table_is_written_and_listed(synth_rec, tmp_path):
    out = tmp_path / "o"
    m = _convert(synth_rec, out)
    path = out / LABELS_NAME
    assert m.labels is not None and m.labels.name == LABELS_NAME
    assert m.labels.bytes == path.stat().st_size and m.labels.sha256 == sha256_file(path)
    assert json.loads((out / "manifest.json").read_text())["labels"] == {
        "name": LABELS_NAME, "bytes": m.labels.bytes, "sha256": m.labels.sha256}
    table = np.load(path)
    assert table.dtype == np.dtype("<i4") and table.shape == (IDENTITIES * PER_IDENTITY,)
    samples = read_shards(out)
    assert table.tolist() == [samples[k][1] for k in range(len(table))]  # row k = the label of key k's .cls
    assert labels_problem(table, m.num_samples, m.num_classes) is None
    assert convert.verify(out) == []


def test_raw_encoding_writes_the_same_table(synth_rec, tmp_path):
    _convert(synth_rec, tmp_path / "jpeg")
    _convert(synth_rec, tmp_path / "raw", encoding="raw")
    assert (tmp_path / "jpeg" / LABELS_NAME).read_bytes() == (tmp_path / "raw" / LABELS_NAME).read_bytes()


def test_verify_catches_a_damaged_table(synth_rec, tmp_path, capsys):
    out = tmp_path / "o"
    m = _convert(synth_rec, out)
    path = out / LABELS_NAME
    good = path.read_bytes()

    data = bytearray(good)
    data[-4] ^= 0x01  # the last label's low byte (still a class): only the checksum and the .cls members can tell
    path.write_bytes(bytes(data))
    problems = convert.verify(out)
    assert any(f"labels table {LABELS_NAME}: sha256" in p for p in problems)
    assert any(f"row {m.num_samples - 1} holds label" in p and ".cls holds" in p for p in problems)
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1 and LABELS_NAME in capsys.readouterr().err

    path.write_bytes(good[:-4])
    problems = convert.verify(out)
    assert any("bytes, manifest says" in p for p in problems) and any("unreadable" in p for p in problems)

    # A consistent-looking table (its record updated) whose labels are not the .cls members' labels.
    table = np.load(_write(path, good))
    table[[3, 4]] = table[[4, 3]] if table[3] != table[4] else (table[3] + 1) % m.num_classes
    np.save(path, table)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["labels"].update(bytes=path.stat().st_size, sha256=sha256_file(path))
    (out / "manifest.json").write_text(json.dumps(manifest))
    problems = convert.verify(out)
    assert len(problems) == 1 and "row 3 holds label" in problems[0] and "rows differ from their .cls" in problems[0]

    path.unlink()
    assert convert.verify(out) == [f"labels table {LABELS_NAME}: missing"]


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_rerun_rewrites_a_damaged_table(synth_rec, tmp_path):
    _convert(synth_rec, tmp_path / "ref")
    out = tmp_path / "o"
    _convert(synth_rec, out)
    data = bytearray((out / LABELS_NAME).read_bytes())
    data[-1] ^= 0x01
    (out / LABELS_NAME).write_bytes(bytes(data))
    untouched = os.stat(out / "train-000000.tar").st_mtime_ns
    _convert(synth_rec, out)
    assert tree_bytes(out) == tree_bytes(tmp_path / "ref")
    assert os.stat(out / "train-000000.tar").st_mtime_ns == untouched  # shards kept, only the table rewritten


def test_a_set_without_table_is_refused_until_converted_again(synth_rec, tmp_path):
    """A shard set written before the table existed: no labels.npy, and no `labels` in its manifest."""
    out = tmp_path / "o"
    m = _convert(synth_rec, out)
    reference = tree_bytes(out)
    data = json.loads((out / "manifest.json").read_text())
    del data["labels"]
    (out / "manifest.json").write_text(json.dumps(data))
    (out / LABELS_NAME).unlink()
    expected = (f"{out / 'manifest.json'}: lists no labels table: this shard set was converted before labels.npy "
                f"existed; convert it again (python -m convert rec {m.source['path']} {out} --overwrite, with the "
                f"options it was converted with)")
    assert convert.verify(out) == [expected]
    with pytest.raises(StaleManifestError) as info:
        _convert(synth_rec, out)  # the same command again: refused, nothing rewritten
    assert str(info.value) == expected and not (out / LABELS_NAME).exists()
    again = _convert(synth_rec, out, overwrite=True)
    assert again.labels is not None and tree_bytes(out) == reference
