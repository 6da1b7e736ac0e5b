"""rec -> shards and folder -> shards: every image and label survives, shuffled, readable by DALI."""
import glob
import io
import os

import numpy as np
import pytest
import simplejpeg
from PIL import Image

import convert
from convert import worker_pool
from convert.manifest import Manifest
from convert.recordio import RecordReader, unpack
from tests.convert.datasets import IDENTITIES, PER_IDENTITY, read_shards, tree_bytes

N = IDENTITIES * PER_IDENTITY


def _rec_images(rec_dir):
    reader = RecordReader(os.path.join(rec_dir, "train.rec"), os.path.join(rec_dir, "train.idx"))
    out = []
    for key in range(1, N + 1):
        header, payload = unpack(reader.read(key))
        out.append((payload, int(header.label)))
    return out


def test_rec_round_trip_every_image_and_label(synth_rec, tmp_path):
    m = convert.convert_rec(synth_rec, tmp_path / "o", samples_per_shard=16, seed=7, workers=1, progress=False)
    assert (m.num_samples, m.num_classes, m.image_size, m.encoding, m.seed) == (N, IDENTITIES, 112, "jpeg", 7)
    assert [s.samples for s in m.shards] == [16, 16, 16, 12] and m.class_map is None
    assert [s.name for s in m.shards] == [f"train-{k:06d}.tar" for k in range(4)]
    samples = read_shards(tmp_path / "o")
    assert sorted(samples) == list(range(N))
    # Same multiset of (bytes, label) pairs, and a real shuffle (not the source order).
    assert sorted(samples.values()) == sorted(_rec_images(synth_rec))
    assert [samples[k] for k in range(N)] != _rec_images(synth_rec)
    assert Manifest.load(tmp_path / "o") == m
    assert convert.verify(tmp_path / "o") == []


def test_folder_round_trip_and_class_map(synth_folder, tmp_path):
    m = convert.convert_folder(synth_folder, tmp_path / "o", samples_per_shard=25, workers=1, progress=False)
    assert m.class_map == tuple(f"{i:06d}" for i in range(IDENTITIES))
    expected = []
    identities = sorted(n for n in os.listdir(synth_folder) if not n.startswith("."))  # less the output lock
    for label, name in enumerate(identities):
        for f in sorted(os.listdir(os.path.join(synth_folder, name))):
            expected.append((open(os.path.join(synth_folder, name, f), "rb").read(), label))
    assert sorted(read_shards(tmp_path / "o").values()) == sorted(expected)


def test_first_shard_mixes_identities(synth_rec, tmp_path):
    """The source is identity-sorted; the global shuffle spreads identities over every shard."""
    convert.convert_rec(synth_rec, tmp_path / "o", samples_per_shard=16, workers=1, progress=False)
    m = Manifest.load(tmp_path / "o")
    samples = read_shards(tmp_path / "o")
    first = {samples[k][1] for k in range(m.shards[0].samples)}
    assert len(first) > IDENTITIES // 2, first  # identity-sorted order would give 4 classes


def test_seed_changes_order_not_content_and_same_seed_same_bytes(synth_rec, tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        convert.convert_rec(synth_rec, tmp_path / name, samples_per_shard=20, seed=seed, workers=1, progress=False)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    a, c = read_shards(tmp_path / "a"), read_shards(tmp_path / "c")
    assert a != c and sorted(a.values()) == sorted(c.values())


def test_raw_encoding_stores_decoded_pixels(synth_rec, tmp_path):
    m = convert.convert_rec(synth_rec, tmp_path / "o", encoding="raw", samples_per_shard=32, workers=1, progress=False)
    assert m.encoding == "raw" and m.extension == "raw"
    decoded = {simplejpeg.decode_jpeg(b).tobytes(): label for b, label in _rec_images(synth_rec)}
    samples = read_shards(tmp_path / "o")
    assert all(len(b) == 112 * 112 * 3 and decoded[b] == label for b, label in samples.values())
    assert convert.verify(tmp_path / "o") == []


def _folder_with(tmp_path, images):
    src = tmp_path / "src"
    for cls, name, data in images:
        (src / cls).mkdir(parents=True, exist_ok=True)
        (src / cls / name).write_bytes(data)
    return src


def _png(pixels):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_resize_only_images_of_another_size(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (100, 90, 3), dtype=np.uint8)
    right = simplejpeg.encode_jpeg(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8), quality=90)
    src = _folder_with(tmp_path, [("a", "1.jpg", right), ("b", "2.png", _png(small))])
    with pytest.raises(ValueError, match=r"2\.png: image is 100x90, expected 112x112"):
        convert.convert_folder(src, tmp_path / "o", workers=1, progress=False)
    assert not os.path.exists(tmp_path / "o" / "manifest.json")
    convert.convert_folder(src, tmp_path / "o", resize=True, workers=1, progress=False)
    by_label = {label: b for b, label in read_shards(tmp_path / "o").values()}
    assert by_label[0] == right  # already 112x112: bytes unchanged
    assert simplejpeg.decode_jpeg(by_label[1]).shape == (112, 112, 3)


def test_skip_corrupt_leaves_out_and_lists(synth_folder, tmp_path):
    src = tmp_path / "src"
    os.system(f"cp -r {synth_folder} {src}")
    bad = src / "000003" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"000003/0001\.jpg: JPEG does not decode"):
        convert.convert_folder(src, tmp_path / "o", workers=1, progress=False)
    assert not os.path.exists(tmp_path / "o" / "manifest.json")
    m = convert.convert_folder(src, tmp_path / "o", skip_corrupt=True, workers=1, progress=False)
    assert m.num_samples == N - 1 and m.skipped == (str(bad),)
    assert sorted(read_shards(tmp_path / "o")) == list(range(N - 1))  # keys stay contiguous
    assert convert.verify(tmp_path / "o") == []


@pytest.mark.parametrize("encoding", ["jpeg", "raw"])
def test_worker_processes_give_the_same_bytes(synth_rec, tmp_path, monkeypatch, encoding):
    from convert import shard_jobs, validation

    monkeypatch.setattr(worker_pool, "MIN_PARALLEL_IMAGES", 0)
    monkeypatch.setattr(shard_jobs, "MIN_PARALLEL_WRITES", 0)
    pools = []
    for module in (shard_jobs, validation):  # both passes run in worker processes
        monkeypatch.setattr(module, "spawn_pool", lambda n, *a, spawn=module.spawn_pool: pools.append(n) or spawn(n, *a))
    for name, workers in (("one", 1), ("two", 2)):
        convert.convert_rec(synth_rec, tmp_path / name, encoding=encoding, samples_per_shard=25, workers=workers,
                            progress=False)
    assert pools == [2, 2]
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two")


def test_dali_webdataset_reader_reads_shards_with_our_index(synth_rec, tmp_path):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    convert.convert_rec(synth_rec, tmp_path / "o", samples_per_shard=16, workers=1, progress=False)
    tars = sorted(glob.glob(str(tmp_path / "o" / "*.tar")))
    expected = read_shards(tmp_path / "o")

    @pipeline_def(batch_size=N, num_threads=1, device_id=None)
    def pipe():
        jpg, cls = fn.readers.webdataset(
            paths=tars, index_paths=[t[:-4] + ".idx" for t in tars], ext=["jpg", "cls"],
            missing_component_behavior="error", random_shuffle=False,
        )
        return jpg, cls, fn.decoders.image(jpg, device="cpu")

    p = pipe()
    p.build()
    jpg, cls, img = p.run()
    got = [(np.array(jpg[i]).tobytes(), int(np.array(cls[i]).tobytes())) for i in range(N)]
    assert got == [expected[k] for k in range(N)]  # shard order, then key order
    assert all(np.array(img[i]).shape == (112, 112, 3) for i in range(N))


def test_the_writing_pass_spawns_only_where_processes_shorten_it():
    from convert.shard_jobs import pool_saving

    assert pool_saving([29300, 700], 2) == 700  # the large shard is the pass either way
    assert pool_saving([15000, 15000], 2) == 15000
    assert pool_saving([100] * 300, 8) == 30000 - 3750
    assert pool_saving([5000], 4) == 0 and pool_saving([], 2) == 0
