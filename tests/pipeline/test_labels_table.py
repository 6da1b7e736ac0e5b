"""The converter's labels table as the pipeline reads it: equal to the .cls members, checked once on open;
a shard set without it (converted before it existed) is refused, saying to convert it again."""
import dataclasses
import json
import shutil

import numpy as np
import pytest

from common.errors import InputError
from common.files import sha256_file
import pipeline
from convert import Manifest
from convert.manifest import StaleManifestError
from pipeline.shard_index import ShardIndex, ShardReader
from tests.pipeline.conftest import read_tars, without_labels_table

BACKENDS = ["dali", "torch"]


@pytest.mark.parametrize("shards", ["jpeg_shards", "raw_shards"])
def test_table_labels_equal_the_cls_members(request, shards):
    shards = request.getfixturevalue(shards)
    index = ShardIndex.open(shards)
    assert index.label_table is not None and index.label_table.dtype == np.int32
    tars = read_tars(shards)
    keys = np.arange(index.num_samples)
    expected = np.array([tars[k][1] for k in keys])
    assert np.array_equal(ShardReader(index).labels(keys), expected)
    assert np.array_equal(pipeline.ShardSamples(shards).labels(keys[::-1]), expected[::-1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_shards_without_a_table_are_refused_saying_to_convert_again(jpeg_shards, tmp_path, backend):
    old = without_labels_table(jpeg_shards, tmp_path / "old")
    assert not (old / "labels.npy").exists() and "labels" not in json.loads((old / "manifest.json").read_text())
    source = Manifest.load(jpeg_shards).source["path"]
    with pytest.raises(StaleManifestError) as info:
        pipeline.build_loader(old, 12, device="cpu", backend=backend)
    message = str(info.value)
    assert message.startswith(f"{old / 'manifest.json'}: lists no labels table") and "\n" not in message
    assert f"python -m convert rec {source} {old} --overwrite" in message
    assert isinstance(info.value, InputError)  # a CLI prints it as one line and exits 2


def _with_table(shards, tmp_path, table) -> str:
    """A copy of `shards` whose labels table is `table`, its manifest record updated to match."""
    out = tmp_path / "shards"
    shutil.copytree(shards, out)
    np.save(out / "labels.npy", table)
    manifest = Manifest.load(out)
    rec = dataclasses.replace(manifest.labels, bytes=(out / "labels.npy").stat().st_size,
                              sha256=sha256_file(out / "labels.npy"))
    dataclasses.replace(manifest, labels=rec).save(out)
    return out


@pytest.mark.parametrize("table, message", [
    (np.zeros(143, np.int32), r"expected shape \(144,\) \(num_samples\), found \(143,\)"),
    (np.zeros((144, 1), np.int32), r"expected shape \(144,\) \(num_samples\), found \(144, 1\)"),
    (np.zeros(144, np.float32), r"expected integer labels, found dtype float32"),
    (np.where(np.arange(144) == 77, 24, 0).astype(np.int32), r"row 77 holds label 24, outside 0\.\.23"),
    (np.where(np.arange(144) == 5, -1, 0).astype(np.int64), r"row 5 holds label -1, outside 0\.\.23"),
])
def test_a_table_that_does_not_fit_the_manifest(jpeg_shards, tmp_path, table, message):
    out = _with_table(jpeg_shards, tmp_path, table)
    with pytest.raises(pipeline.ShardError, match=rf"/labels\.npy: {message}") as info:
        pipeline.build_loader(out, 8, device="cpu")
    assert "\n" not in str(info.value)


def test_a_missing_or_truncated_table(jpeg_shards, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(jpeg_shards, out)
    data = (out / "labels.npy").read_bytes()
    (out / "labels.npy").write_bytes(data[:-4])
    with pytest.raises(pipeline.ShardError, match=rf"labels\.npy: labels table of {len(data) - 4} bytes, "
                                                  rf"manifest\.json says {len(data)}"):
        pipeline.build_loader(out, 8, device="cpu")
    (out / "labels.npy").unlink()
    with pytest.raises(pipeline.ShardError, match=r"labels\.npy: the labels table that manifest\.json lists is "
                                                  r"missing"):
        pipeline.build_loader(out, 8, device="cpu")
