"""--exclude-classes FILE: the listed source classes are left out, the rest renumbered, the manifest says so;
a class the source lacks is an error naming the file and line; a changed list does not resume another's."""
import hashlib
import json
import os

import pytest

from convert import converter, shard_writer
from convert.cli import main
from convert.manifest import Manifest
from tests.convert.datasets import IDENTITIES, PER_IDENTITY, read_shards, tree_bytes


def _run(capsys, *argv):
    code = main([*argv, "--workers", "1", "--quiet"])
    return code, capsys.readouterr().err.strip()


def _one_line_error(code, err, *fragments):
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("python -m convert: error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def _list(path, text):
    path.write_text(text)
    return str(path)


def test_rec_leaves_the_classes_out_and_renumbers_the_rest(capsys, tmp_path, synth_rec):
    excl = _list(tmp_path / "excl.txt", "# flagged by python -m evaluate overlap\n\n3\n 7 \n3\n")
    assert _run(capsys, "rec", synth_rec, str(tmp_path / "o"), "--exclude-classes", excl, "--samples-per-shard",
                "16")[0] == 0
    m = Manifest.load(tmp_path / "o")
    kept = tuple(k for k in range(IDENTITIES) if k not in (3, 7))
    assert (m.num_classes, m.num_samples, m.class_map) == (IDENTITIES - 2, len(kept) * PER_IDENTITY, kept)
    e = m.exclusion
    assert (e.file, e.num_classes, e.num_samples, e.classes) == (excl, 2, 2 * PER_IDENTITY, (3, 7))
    assert e.sha256 == hashlib.sha256(open(excl, "rb").read()).hexdigest()
    labels = [label for _, label in read_shards(tmp_path / "o").values()]
    assert sorted(set(labels)) == list(range(IDENTITIES - 2)) and len(labels) == m.num_samples
    assert main(["verify", str(tmp_path / "o")]) == 0


def test_folder_excludes_by_folder_name(capsys, tmp_path, synth_folder):
    excl = _list(tmp_path / "excl.txt", "000004\n")
    assert _run(capsys, "folder", synth_folder, str(tmp_path / "o"), "--exclude-classes", excl)[0] == 0
    m = Manifest.load(tmp_path / "o")
    assert m.class_map == tuple(f"{i:06d}" for i in range(IDENTITIES) if i != 4)
    assert (m.exclusion.classes, m.exclusion.num_samples) == (("000004",), PER_IDENTITY)


def test_without_a_list_the_manifest_is_what_it_was(capsys, tmp_path, synth_rec):
    assert _run(capsys, "rec", synth_rec, str(tmp_path / "o"))[0] == 0
    data = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert "exclusion" not in data and "exclude_classes_sha256" not in data["extra"]["fingerprint"]["options"]


def test_a_class_the_source_lacks_names_the_file_and_line(capsys, tmp_path, synth_rec, synth_folder):
    bad = _list(tmp_path / "bad.txt", "# header\n3\n99\n")
    _one_line_error(*_run(capsys, "rec", synth_rec, str(tmp_path / "o"), "--exclude-classes", bad),
                    bad, "line 3", "99")
    assert not (tmp_path / "o" / "manifest.json").exists()
    word = _list(tmp_path / "word.txt", "3\nalice\n")
    _one_line_error(*_run(capsys, "rec", synth_rec, str(tmp_path / "o"), "--exclude-classes", word),
                    word, "line 2", "whole number")
    folder = _list(tmp_path / "folder.txt", "000001\n000099\n")
    _one_line_error(*_run(capsys, "folder", synth_folder, str(tmp_path / "f"), "--exclude-classes", folder),
                    folder, "line 2", "000099")
    assert not any(n.startswith(".convert") for n in os.listdir(tmp_path / "f"))  # refused before any pass
    _one_line_error(*_run(capsys, "rec", synth_rec, str(tmp_path / "o"), "--exclude-classes",
                          str(tmp_path / "nowhere.txt")), "nowhere.txt", "cannot read")


def test_excluding_every_class_is_an_error(capsys, tmp_path, synth_rec):
    everything = _list(tmp_path / "all.txt", "\n".join(str(k) for k in range(IDENTITIES)) + "\n")
    _one_line_error(*_run(capsys, "rec", synth_rec, str(tmp_path / "o"), "--exclude-classes", everything),
                    "no readable images outside the excluded classes")


def test_a_changed_list_is_refused_the_same_list_is_finished(capsys, tmp_path, synth_rec):
    a, b = _list(tmp_path / "a.txt", "3\n"), _list(tmp_path / "b.txt", "3\n4\n")
    out = str(tmp_path / "o")
    assert _run(capsys, "rec", synth_rec, out, "--exclude-classes", a)[0] == 0
    before = tree_bytes(out)
    assert _run(capsys, "rec", synth_rec, out, "--exclude-classes", a)[0] == 0
    assert tree_bytes(out) == before
    _one_line_error(*_run(capsys, "rec", synth_rec, out, "--exclude-classes", b),
                    "same source with other options", "exclude_classes_sha256", "--overwrite")
    _one_line_error(*_run(capsys, "rec", synth_rec, out), "same source with other options", "exclude_classes_sha256")
    assert tree_bytes(out) == before
    assert _run(capsys, "rec", synth_rec, out, "--exclude-classes", b, "--overwrite")[0] == 0
    assert Manifest.load(out).exclusion.classes == (3, 4)


class Killed(BaseException):
    pass


def test_an_unfinished_conversion_resumes_only_with_its_own_list(capsys, tmp_path, synth_rec, monkeypatch):
    a, b = _list(tmp_path / "a.txt", "3\n"), _list(tmp_path / "b.txt", "5\n")
    out = str(tmp_path / "o")
    calls = {"n": 0}
    real_write = shard_writer.ShardWriter.write

    def dying_write(self, *args):
        calls["n"] += 1
        if calls["n"] == 20:
            raise Killed()
        return real_write(self, *args)

    monkeypatch.setattr(shard_writer.ShardWriter, "write", dying_write)
    with pytest.raises(Killed):
        main(["rec", synth_rec, out, "--exclude-classes", a, "--samples-per-shard", "8", "--workers", "1", "--quiet"])
    monkeypatch.undo()
    assert os.path.exists(os.path.join(out, converter.STATE_NAME))
    _one_line_error(*_run(capsys, "rec", synth_rec, out, "--exclude-classes", b, "--samples-per-shard", "8"),
                    "unfinished conversion of the same source with other options", "exclude_classes_sha256")
    assert _run(capsys, "rec", synth_rec, out, "--exclude-classes", a, "--samples-per-shard", "8")[0] == 0
    assert Manifest.load(out).exclusion.classes == (3,)
