"""--exclude-keys and --merge-classes (the decisions `python -m evaluate audit` writes and a user edits):
images left out, classes merged and renumbered contiguously, the manifest's record of both with the files'
sha256, the errors naming file and line, resume; and convert.source_keys, which names each shard sample's
source image (what the audit writes into exclude-keys.txt)."""
import hashlib
import json

import numpy as np

import pipeline
from convert.cli import main
from convert.manifest import Manifest
from convert.source_keys import source_keys
from tests.convert.datasets import IDENTITIES, PER_IDENTITY, read_shards, tree_bytes
from tests.convert.test_exclude_classes import _list, _one_line_error, _run


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_rec_excludes_keys_merges_classes_and_records_both(capsys, tmp_path, synth_rec):
    # insightface layout: image records 1..60, identity k at keys 5k+1..5k+5
    keys = _list(tmp_path / "keys.txt", "# outliers\n2\n 13 \n2\n")
    merge = _list(tmp_path / "merge.txt", "# conflicts\n4 -> 1\n9 -> 1\n11 -> 6\n")
    out = tmp_path / "o"
    code, err = _run(capsys, "rec", synth_rec, str(out), "--exclude-keys", keys, "--merge-classes", merge,
                     "--samples-per-shard", "16")
    assert code == 0, err
    m = Manifest.load(out)
    assert m.num_samples == IDENTITIES * PER_IDENTITY - 2 and m.num_classes == IDENTITIES - 3
    kept = tuple(k for k in range(IDENTITIES) if k not in (4, 9, 11))
    assert m.class_map == kept  # contiguous labels, each new label's source class
    assert (m.key_exclusion.keys, m.key_exclusion.sha256) == (("2", "13"), _sha(keys))
    assert m.merge.sha256 == _sha(merge) and m.merge.num_samples == 3 * PER_IDENTITY
    assert m.merge.merged == ((4, 1, kept.index(1)), (9, 1, kept.index(1)), (11, 6, kept.index(6)))
    labels = [label for _, label in read_shards(out).values()]
    counts = np.bincount(labels)
    assert counts[kept.index(1)] == 3 * PER_IDENTITY and counts[kept.index(0)] == PER_IDENTITY - 1  # key 2 gone
    assert counts[kept.index(2)] == PER_IDENTITY - 1  # key 13 is identity 2's third image
    assert main(["verify", str(out)]) == 0
    data = json.loads((out / "manifest.json").read_text())
    options = data["extra"]["fingerprint"]["options"]
    assert options["exclude_keys_sha256"] == _sha(keys) and options["merge_classes_sha256"] == _sha(merge)
    before = tree_bytes(out)  # a rerun finds it finished: the same bytes
    assert _run(capsys, "rec", synth_rec, str(out), "--exclude-keys", keys, "--merge-classes", merge,
                "--samples-per-shard", "16")[0] == 0
    assert tree_bytes(out) == before
    edited = _list(tmp_path / "keys.txt", "2\n")  # an edited decision is another conversion
    _one_line_error(*_run(capsys, "rec", synth_rec, str(out), "--exclude-keys", edited, "--merge-classes", merge,
                          "--samples-per-shard", "16"), "other options", "exclude_keys_sha256")


def test_source_keys_name_each_sample_and_read_back_through_exclusions(capsys, tmp_path, synth_rec, synth_folder):
    keys = _list(tmp_path / "keys.txt", "000003/0001.jpg\n")
    excl = _list(tmp_path / "excl.txt", "000005\n")
    out = tmp_path / "f"
    assert _run(capsys, "folder", synth_folder, str(out), "--exclude-keys", keys, "--exclude-classes", excl)[0] == 0
    samples = pipeline.ShardSamples(out)
    names = source_keys(out, samples)
    assert len(names) == IDENTITIES * PER_IDENTITY - PER_IDENTITY - 1 and len(set(names)) == len(names)
    assert "000003/0001.jpg" not in names and not any(n.startswith("000005/") for n in names)
    shards = read_shards(out)
    for k in (0, 7, len(names) - 1):
        assert shards[k][0] == open(f"{synth_folder}/{names[k]}", "rb").read()
    assert _run(capsys, "rec", synth_rec, str(tmp_path / "r"))[0] == 0
    rec_names = source_keys(tmp_path / "r", pipeline.ShardSamples(tmp_path / "r"))
    assert sorted(int(n) for n in rec_names) == list(range(1, IDENTITIES * PER_IDENTITY + 1))


def test_folder_merge_and_decision_errors_name_file_and_line(capsys, tmp_path, synth_folder, synth_rec):
    merge = _list(tmp_path / "m.txt", "000002 -> 000007\n")
    assert _run(capsys, "folder", synth_folder, str(tmp_path / "o"), "--merge-classes", merge)[0] == 0
    m = Manifest.load(tmp_path / "o")
    assert m.merge.merged == (("000002", "000007", 6),) and "000002" not in m.class_map
    cases = [("--merge-classes", "000001 -> 000001\n", "line 1", "into itself"),
             ("--merge-classes", "# x\n000001 -> 000099\n", "line 2", "000099"),
             ("--merge-classes", "000001 -> 000002\n000002 -> 000003\n", "line 1", "chain"),
             ("--merge-classes", "000001 000002\n", "line 1", "FROM -> TO"),
             ("--exclude-keys", "000001/0000.jpg\nnope.jpg\n", "line 2", "nope.jpg")]
    for n, (flag, text, *fragments) in enumerate(cases):
        f = _list(tmp_path / f"bad{n}.txt", text)
        _one_line_error(*_run(capsys, "folder", synth_folder, str(tmp_path / f"e{n}"), flag, f), f, *fragments)
    f = _list(tmp_path / "badrec.txt", "1\n999\n")
    _one_line_error(*_run(capsys, "rec", synth_rec, str(tmp_path / "er"), "--exclude-keys", f), f, "line 2", "999")
