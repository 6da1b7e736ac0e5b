"""bench.data: the three forms of the benchmark's data hold the same images, whatever --data names."""
import numpy as np
import pytest

from bench import data as bench_data
from bench.baseline_loader import RecDataset
from bench.settings import BenchError
from convert import convert_rec
from convert.rec_layout import image_keys
from convert.recordio import RecordReader, unpack
from convert.synthetic import write_synthetic


def _rec_images(rec, idx):
    with RecordReader(rec, idx) as reader:
        return sorted((unpack(reader.read(k))[1], int(unpack(reader.read(k))[0].label)) for k in image_keys(reader))


def _shard_images(shards):
    import pipeline

    samples = pipeline.ShardSamples(shards)
    keys = np.arange(samples.num_samples)
    return sorted(zip((v.tobytes() for v in samples.encoded(keys)), samples.labels(keys).tolist()))


@pytest.fixture(scope="module")
def small_rec(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    write_synthetic(root, 3, 4, seed=1, fmt="rec")
    return root


def test_from_a_rec_folder_the_shards_hold_its_images(small_rec, tmp_path):
    d = bench_data.prepare(small_rec, 0, tmp_path / "cache", progress=False)
    assert (d.images, d.classes, d.image_size) == (12, 3, 112)
    assert d.rec == small_rec / "train.rec" and d.mean_image_bytes > 0
    assert _shard_images(d.jpeg_shards) == _rec_images(d.rec, d.idx)
    assert d.raw_shards.is_dir() and d.jpeg_shards.parent == d.raw_shards.parent


def test_from_shards_a_rec_is_written_with_the_same_images(small_rec, tmp_path):
    shards = tmp_path / "shards"
    convert_rec(small_rec, shards, progress=False)
    d = bench_data.prepare(shards, 0, tmp_path / "cache", progress=False)
    assert d.jpeg_shards == shards and d.rec != small_rec / "train.rec"
    assert _rec_images(d.rec, d.idx) == _shard_images(shards)
    x, label, key = RecDataset(d.rec, d.idx)[0]
    assert x.shape == (3, 112, 112) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_raw_shards_and_odd_paths_are_refused(small_rec, tmp_path):
    raw = tmp_path / "raw"
    convert_rec(small_rec, raw, encoding="raw", progress=False)
    with pytest.raises(BenchError, match="'raw' images"):
        bench_data.prepare(raw, 0, tmp_path / "cache", progress=False)
    with pytest.raises(BenchError, match="expected a shards directory"):
        bench_data.prepare(tmp_path / "nothing-here", 0, tmp_path / "cache", progress=False)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train.rec").write_bytes(b"")
    with pytest.raises(BenchError, match="train.idx is missing"):
        bench_data.prepare(tmp_path / "half", 0, tmp_path / "cache", progress=False)
