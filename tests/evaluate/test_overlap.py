"""python -m evaluate overlap: training-class centres against verification images, the threshold rule,
the report, and the exclusion list that `python -m convert rec --exclude-classes` rebuilds the shards with.

The synthetic faces of convert.synthetic all look alike in pixel space (pooled-pixel cosines of two
different identities reach 0.96, above most pairs of one identity), so no untrained stand-in tells them
apart. These tests use identity patterns instead (conftest's smooth colour patterns, each photo of an
identity varied by a pattern of its own), which conftest's PoolNet (pooled pixels through a fixed linear
layer) separates the way a trained backbone separates faces: the same identity near 0.8, strangers
below 0.45.
"""
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import convert
import models
import pipeline
from PIL import Image

from convert.recordio import IRHeader, RecordWriter, pack
from evaluate import cli, impostor_threshold, overlap, set_identities, verification
from tests.evaluate.conftest import TINY_EMB, TINY_NET, PoolNet, write_bin

TRAIN_IDS = tuple(range(10))  # the training classes: .rec labels 0..9, 4 images each
PER_ID = 4
SHARED = (2, 5, 7)  # training identities that the overlapping set shows again (new photos)
UNSEEN = tuple(range(50, 58))
EMB = 128  # PoolNet's width: enough dimensions that strangers' similarities stay near 0.2 +- 0.1


def photo(rng, identity: int, variation: float = 0.45) -> bytes:
    """A JPEG of `identity`: its fixed 6x6 colour pattern (conftest.identity_image's) plus `variation`
    times a pattern of this photo's own, smoothly upsampled to 112x112."""
    base = np.random.default_rng(1000 + identity).integers(0, 256, (6, 6, 3)).astype(np.float32)
    own = rng.integers(0, 256, (6, 6, 3)) - 127.5
    pattern = np.clip(base + variation * own, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pattern).resize((112, 112), Image.Resampling.BILINEAR).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_rec(folder: Path, identities, per_identity: int, seed: int = 0) -> Path:
    """An im2rec-layout .rec (every record an image, the identity as its label) of identity patterns."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with RecordWriter(folder / "train.rec", folder / "train.idx") as w:
        key = 0
        for identity in identities:
            for _ in range(per_identity):
                w.write_idx(key, pack(IRHeader(0, float(identity), key, 0), photo(rng, identity)))
                key += 1
    return folder


def pair_bin(path: Path, identities, seed: int) -> None:
    """A same-identity pair of every identity, and a different pair of each with the next one: new photos."""
    rng = np.random.default_rng(seed)
    images, issame = [], []
    for i, a in enumerate(identities):
        b = identities[(i + 1) % len(identities)]
        images += [photo(rng, a), photo(rng, a), photo(rng, a), photo(rng, b)]
        issame += [True, False]
    write_bin(path, images, issame)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("overlap")
    rec = write_rec(root / "rec", TRAIN_IDS, PER_ID)
    convert.convert_rec(rec, root / "shards", workers=1, progress=False, samples_per_shard=16)
    val = root / "val"
    val.mkdir()
    pair_bin(val / "shared.bin", SHARED, seed=11)
    pair_bin(val / "unseen.bin", UNSEEN, seed=12)
    return root


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return PoolNet(EMB).eval()


def _embedded(net, path):
    vset = verification.load_set(path)
    return overlap.pair_set(vset, overlap.set_embeddings(net, vset, device="cpu", progress=False))


def test_class_keys_are_the_first_k_of_each_class_in_key_order():
    labels = np.array([2, 0, 2, 1, 0, 2, 2, 0])
    assert overlap.class_keys(labels, 2).tolist() == [0, 1, 2, 3, 4]
    assert overlap.class_keys(labels, 9).tolist() == list(range(8))


def test_centres_are_normalised_means_of_normalised_fused_embeddings(data, net):
    samples = pipeline.ShardSamples(data / "shards")
    c = overlap.class_centres(net, samples, per_class=3, device="cpu", batch_size=4, progress=False)
    assert c.centres.shape == (len(TRAIN_IDS), EMB) and c.images.tolist() == [3] * len(TRAIN_IDS)
    labels = samples.labels(np.arange(samples.num_samples))
    keys = np.flatnonzero(labels == 4)[:3]
    x = samples.images(keys, device="cpu")
    with torch.no_grad():
        fused = (net(x) + net(torch.flip(x, dims=[3]))).numpy()
    expected = overlap.unit(overlap.unit(fused).mean(0, keepdims=True))[0]
    np.testing.assert_allclose(c.centres[4], expected, atol=1e-5)


def _all_fused(net, samples):
    """Every training image's unit fused embedding, computed directly, and its label."""
    keys = np.arange(samples.num_samples)
    x = samples.images(keys, device="cpu")
    with torch.no_grad():
        return overlap.unit((net(x) + net(torch.flip(x, dims=[3]))).numpy()), samples.labels(keys)


def test_a_set_of_training_identities_is_flagged_and_one_of_unseen_identities_is_not(data, net):
    samples = pipeline.ShardSamples(data / "shards")
    centres = overlap.class_centres(net, samples, device="cpu", progress=False)
    sets = [_embedded(net, data / "val" / "shared.bin"), _embedded(net, data / "val" / "unseen.bin")]
    chosen, (shared, unseen) = overlap.audit(centres, sets)

    stats = [overlap.pair_stats(s.emb, s.issame) for s in sets]
    # The impostor rule over the 40 training images: 720 pairs of different classes support no FAR below
    # 1/720, so the threshold is the most similar such pair.
    emb, labels = _all_fused(net, samples)
    upper = np.triu_indices(len(labels), 1)
    impostors = (emb @ emb.T)[upper][(labels[:, None] != labels[None])[upper]]
    assert impostors.size == 720 and chosen.rule["pairs"] == 720 and chosen.rule["far"] == pytest.approx(1 / 720)
    assert chosen.chosen_by == "rule" and chosen.value == pytest.approx(impostors.max(), abs=1e-5)
    assert "FAR" in chosen.how and f"{chosen.value:.4f}" in chosen.how
    assert all(s.separates() for s in stats) and overlap.warnings_for(chosen, [shared, unseen]) == []
    assert shared.flagged_classes == SHARED  # contiguous labels are the .rec's here (no class_map)
    assert all(o.images == 1 or 2 * len(o.above) > o.images for o in shared.overlaps)
    assert all(o.max_similarity > chosen.value for o in shared.overlaps)
    assert unseen.overlaps == ()


def test_a_given_threshold_overrides_the_rule(data, net):
    samples = pipeline.ShardSamples(data / "shards")
    centres = overlap.class_centres(net, samples, per_class=2, device="cpu", progress=False)
    sets = [_embedded(net, data / "val" / "unseen.bin")]
    chosen, (unseen,) = overlap.audit(centres, sets, threshold=-1.0)
    # every identity (8 same pairs, 16 images in no same pair: 24) taken for every class
    assert chosen.chosen_by == "--threshold" and len(unseen.overlaps) == 24 * len(TRAIN_IDS)
    one_class = overlap.ClassCentres(centres.centres[:1], centres.images[:1], centres.rule_emb[:2],
                                     np.zeros(2, np.int64))
    with pytest.raises(impostor_threshold.ImpostorError):  # no pair of different classes to measure
        overlap.default_threshold(one_class)


def _toy_set():
    """A set of three identities against two class centres (the axes e0, e1): `one_look_alike` has one
    photo near e0 and two far from both, `most_near` has two of three photos near e1, `alone` is a single
    photo near e0; each identity's photos in that order, positions 0..6."""
    far = [0.0, 0.0, 1.0]
    emb = overlap.unit(np.array([[0.9, 0.1, 0.2], far, far, [0.1, 0.9, 0.1], far, [0.2, 0.8, 0.1], [0.95, 0, 0.1]]))
    ids = set_identities.from_labels([bytes([k]) for k in range(7)], np.array([0, 0, 0, 1, 1, 1, 2]),
                                     ("one_look_alike",) * 3 + ("most_near",) * 3 + ("alone",))
    return overlap.AuditedSet("toy", "toy", "people", emb, ids, tuple(f"k{k}" for k in range(7)))


def _decided(threshold=0.5):
    return overlap.overlaps(torch.eye(2, 3), _toy_set(), threshold)[0]


def test_an_identity_is_taken_for_a_class_by_most_of_its_photos_not_one():
    found = _decided()
    assert [(o.identity, o.train_class, o.images, o.above) for o in found] == [
        ("most_near", 1, 3, ("k3", "k5")), ("alone", 0, 1, ("k6",))]
    assert overlap.overlaps(torch.eye(2, 3), _toy_set(), 0.5)[1] == 4  # photos 0, 3, 5, 6 match some class
    sims = overlap.unit(np.array([[0.1, 0.9, 0.1], [0.2, 0.8, 0.1]]))[:, 1]
    assert found[0].max_similarity == pytest.approx(sims.max(), abs=1e-6)
    assert found[0].median_similarity < found[0].max_similarity  # the median of its three photos, one far


def test_the_decision_does_not_depend_on_how_the_similarities_are_blocked(monkeypatch):
    whole = _decided()
    monkeypatch.setattr(overlap, "MATCH_CHUNK_ENTRIES", 2)  # one identity, one class column at a time
    assert _decided() == whole
    monkeypatch.setattr(overlap, "MAX_MATCHES", 1)
    with pytest.raises(overlap.ThresholdError, match="toy: more than 1 .identity, class. pairs"):
        _decided()



def test_identity_chunks_hold_whole_identities_up_to_max_rows():
    starts = np.array([0, 3, 6, 7])  # the toy set's identities: 3, 3 and 1 images
    assert overlap._identity_chunks(starts, 7) == [(0, 3)]
    assert overlap._identity_chunks(starts, 6) == [(0, 2), (2, 3)]
    assert overlap._identity_chunks(starts, 4) == [(0, 1), (1, 3)]
    assert overlap._identity_chunks(starts, 2) == [(0, 1), (1, 2), (2, 3)]  # an identity larger than the chunk
    assert overlap._identity_chunks(np.array([0]), 4) == []


def test_the_decision_is_the_same_for_chunks_of_several_identities(monkeypatch):
    whole = _decided()
    for entries in (8, 12):  # 2 classes: chunks of 4 and 6 rows, [(0, 1), (1, 3)] and [(0, 2), (2, 3)]
        monkeypatch.setattr(overlap, "MATCH_CHUNK_ENTRIES", entries)
        assert [(o.identity, o.train_class, o.above) for o in _decided()] == \
            [(o.identity, o.train_class, o.above) for o in whole]

def _people(folder: Path, identities, photos: int, seed: int) -> Path:
    """A folder of identity folders (named by the identity's number) of new photos."""
    rng = np.random.default_rng(seed)
    for identity in identities:
        (folder / f"{identity:03d}").mkdir(parents=True)
        for n in range(photos):
            (folder / f"{identity:03d}" / f"{n}.jpg").write_bytes(photo(rng, identity))
    return folder


def _overlap(*argv):
    return cli.main(["overlap", "--device", "cpu", "--batch-size", "16", "--quiet", *argv])


@pytest.fixture
def stand_in(monkeypatch, net):
    """`models.load_backbone` giving the PoolNet stand-in, whatever the checkpoint: the CLI's own path
    from there on (no registered backbone separates identities untrained)."""
    def load(spec, *, network=None, embedding_size=None, device="cpu"):
        return models.LoadedBackbone(net.to(device), "poolnet", EMB, Path(spec), None)

    monkeypatch.setattr(models, "load_backbone", load)


def _entries(path):
    return [line for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_cli_flags_writes_exclusions_and_the_rebuilt_shards_pass(data, tmp_path, stand_in, capsys):
    from convert.cli import main as convert_main

    out, excl = tmp_path / "r" / "overlap.json", tmp_path / "exclusions.txt"
    assert _overlap("--checkpoint", str(tmp_path), "--shards", str(data / "shards"), "--val-data", str(data / "val"),
                    "--output", str(out), "--write-exclusions", str(excl)) == 0
    report = json.loads(out.read_text())
    assert report["threshold_chosen_by"] == "rule" and f"{report['threshold']:.4f}" in \
        report["how_the_threshold_was_chosen"] and report["impostor_rule"]["value"] == report["threshold"]
    # 8 people x 4 images: a same pair of each joins 2 of them, the other 2 stand alone: 24 identities x 10 classes
    assert report["sets"]["unseen"]["identities"] == 24 and report["sets"]["unseen"]["comparisons"] == 24 * 10
    assert report["sets"]["unseen"]["expected_by_chance"] == pytest.approx(report["impostor_rule"]["far"] * 240)
    assert (report["shards"], report["checkpoint"], report["per_class"]) == (str(data / "shards"), str(tmp_path), 8)
    assert report["sets"]["shared"]["classes_flagged"] == 3 and report["sets"]["unseen"]["overlaps"] == 0
    assert {o["train_class"] for o in report["overlaps"]} == set(SHARED)
    assert all(o["target"] == "shared" and o["max_similarity"] > report["threshold"] and
               all(0 <= k < 12 for k in o["keys"]) and 2 * o["images_above"] > o["images"] for o in report["overlaps"])
    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(report["overlaps"]) and rows[0]["target"] == "shared"
    assert _entries(excl) == ["2", "5", "7"]
    assert "3 of 10 training classes flagged" in capsys.readouterr().out

    rebuilt = tmp_path / "rebuilt"
    assert convert_main(["rec", str(data / "rec"), str(rebuilt), "--exclude-classes", str(excl), "--workers", "1",
                         "--quiet"]) == 0
    m = convert.Manifest.load(rebuilt)
    assert m.num_classes == len(TRAIN_IDS) - len(SHARED) and m.exclusion.classes == SHARED
    out2 = tmp_path / "r" / "rebuilt.json"
    # At the threshold that flagged them: the rule reads the training images, and the rebuilt shards' 336
    # pairs of this toy model measure a lower one (their largest), which one unseen image's PoolNet cosine reaches.
    assert _overlap("--checkpoint", str(tmp_path), "--shards", str(rebuilt), "--val-data", str(data / "val"),
                    "--threshold", str(report["threshold"]), "--output", str(out2),
                    "--write-exclusions", str(tmp_path / "again.txt")) == 0
    report2 = json.loads(out2.read_text())
    assert report2["classes_flagged"] == 0 and report2["overlaps"] == [] and report2["num_classes"] == 7
    assert report2["threshold"] == report["threshold"]
    assert _entries(tmp_path / "again.txt") == ["2", "5", "7"]  # the shards' own exclusion carried over

    # Our contiguous labels of the rebuilt shards map back to the .rec's through the class_map.
    assert _overlap("--checkpoint", str(tmp_path), "--shards", str(rebuilt), "--val-data", str(data / "val"),
                    "--targets", "unseen", "--threshold", "-1", "--output", str(out2),
                    "--write-exclusions", str(tmp_path / "all.txt")) == 0
    report3 = json.loads(out2.read_text())
    assert report3["threshold_chosen_by"] == "--threshold" and set(report3["sets"]) == {"unseen"}
    assert report3["impostor_rule"] is None and report3["sets"]["unseen"]["expected_by_chance"] is None
    assert all(o["source_class"] == m.class_map[o["train_class"]] for o in report3["overlaps"])
    assert _entries(tmp_path / "all.txt") == [str(k) for k in TRAIN_IDS]


def test_cli_with_a_registered_backbone(data, tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(models.build(TINY_NET, embedding_size=TINY_EMB).state_dict(), tmp_path / "backbone.pth")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({"model": {"name": TINY_NET, "embedding_size": TINY_EMB}}))
    out = tmp_path / "overlap.json"
    assert _overlap("--checkpoint", str(tmp_path / "backbone.pth"), "--config", str(tmp_path / "cfg.yaml"), "--shards",
                    str(data / "shards"), "--val-data", str(data / "val"), "--targets", "shared", "--per-class", "1",
                    "--far", "0.01", "--output", str(out)) == 0
    report = json.loads(out.read_text())
    # 10 images of 10 classes: 45 pairs, which support no rate below 1/45
    assert (report["impostor_rule"]["target_far"], report["impostor_rule"]["far"]) == (0.01, pytest.approx(1 / 45))
    assert (report["network"], report["embedding_size"], report["class_images"]) == (TINY_NET, TINY_EMB, 10)
    assert report["sets"]["shared"]["images"] == 12 and -1.0 <= report["threshold"]
    assert out.with_suffix(".csv").read_text().startswith("target,identity,images,images_above,train_class,")


def test_cli_errors_are_one_line_before_the_work(data, tmp_path, stand_in, capsys):
    base = ["--checkpoint", str(tmp_path), "--shards", str(data / "shards")]

    def fails(*argv, fragments):
        assert _overlap(*argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("python -m evaluate overlap: error: "), err
        for fragment in fragments:
            assert fragment in err, (fragment, err)

    empty = tmp_path / "empty"
    empty.mkdir()
    fails(*base, "--val-data", str(empty), "--output", str(tmp_path / "r.json"),
          fragments=[str(empty), "no verification set"])
    fails(*base, "--val-data", str(data / "val"), "--targets", "IJBC", "--output", str(tmp_path / "r.json"),
          fragments=["IJBC", "verification pair sets"])
    fails(*base, "--val-data", str(data / "val"), "--targets", "lfw", "--output", str(tmp_path / "r.json"),
          fragments=["lfw"])
    fails(*base, "--val-data", str(data / "val"), "--output", str(tmp_path / "r.csv"), fragments=["r.csv"])
    fails("--checkpoint", str(tmp_path), "--shards", str(empty), "--val-data", str(data / "val"),
          "--output", str(tmp_path / "r.json"), fragments=[str(empty)])
    with pytest.raises(SystemExit):  # argparse: a given threshold has no rate
        _overlap(*base, "--val-data", str(data / "val"), "--threshold", "0.5", "--far", "0.01",
                 "--output", str(tmp_path / "r.json"))
    assert not (tmp_path / "r.json").exists()


def test_cli_people_sets_flag_new_photos_of_trained_people_and_no_unseen_person(data, tmp_path, stand_in, capsys):
    shared = _people(tmp_path / "shared_people", SHARED, photos=3, seed=21)
    unseen = _people(tmp_path / "unseen_people", UNSEEN, photos=3, seed=22)
    out, excl = tmp_path / "people.json", tmp_path / "people_exclusions.txt"
    assert _overlap("--checkpoint", str(tmp_path), "--shards", str(data / "shards"), "--people", str(shared),
                    str(unseen), "--output", str(out), "--write-exclusions", str(excl)) == 0
    header = [line for line in excl.read_text().splitlines() if line.startswith("# checkpoint")]
    assert header == [f"# checkpoint {tmp_path}; shards {data / 'shards'}; people {shared}; people {unseen}"]
    assert _entries(excl) == [str(k) for k in SHARED]
    report = json.loads(out.read_text())
    assert report["val_data"] is None and report["people"] == [str(shared), str(unseen)]
    rows = report["sets"]
    assert (rows["shared_people"]["kind"], rows["shared_people"]["identities"], rows["shared_people"]["images"]) == \
        ("people", 3, 9)
    assert rows["shared_people"]["identities_flagged"] == 3 and rows["unseen_people"]["identities_flagged"] == 0
    assert rows["shared_people"]["images_above_threshold"] >= 6  # most of each person's 3 photos
    assert rows["unseen_people"]["pairs"] is None and report["warnings"] == []
    # each person taken for its own class (the identity folder's number is the .rec's label here)
    assert sorted((int(o["identity"]), o["source_class"]) for o in report["overlaps"]) == [(k, k) for k in SHARED]
    assert all(k.startswith(o["identity"] + "/") for o in report["overlaps"] for k in o["keys"])
    out_text = capsys.readouterr().out
    assert "shared_people: 3 identities in 9 images, 3 taken for a training class (0 on a single image)" in out_text


def test_cli_people_photo_that_does_not_decode_stops_the_audit_or_is_left_out(data, tmp_path, stand_in, capsys):
    people = _people(tmp_path / "people", SHARED, photos=3, seed=23)
    bad = people / f"{SHARED[0]:03d}" / "1.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # a JPEG cut short: its header parses, its pixels do not
    out = tmp_path / "r.json"
    argv = ["--checkpoint", str(tmp_path), "--shards", str(data / "shards"), "--people", str(people),
            "--output", str(out)]
    assert _overlap(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "--skip-bad" in err, err
    assert not out.exists()
    assert _overlap(*argv, "--skip-bad") == 0
    row = json.loads(out.read_text())["sets"]["people"]
    assert [s["key"] for s in row["skipped"]] == [f"{SHARED[0]:03d}/1.jpg"] and row["images"] == 8
    assert row["identities"] == 3 and row["identities_flagged"] == 3
    assert "1 image(s) left out" in capsys.readouterr().out


def test_cli_people_errors_are_one_line_before_the_work(data, tmp_path, stand_in, capsys):
    base = ["--checkpoint", str(tmp_path), "--shards", str(data / "shards"), "--output", str(tmp_path / "r.json")]
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.jpg").write_bytes(photo(np.random.default_rng(0), 1))
    people = _people(tmp_path / "a" / "val", UNSEEN[:2], photos=1, seed=0)
    for argv, fragments in [
        ([], ["no test set", "--people"]),
        (["--targets", "lfw"], ["--targets lfw", "--val-data"]),
        (["--people", str(flat)], [str(flat), "flat folder", "identity folders"]),
        (["--val-data", str(data / "val"), "--people", str(people), str(people)], [str(people), "'val'"]),
    ]:
        assert _overlap(*base, *argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("python -m evaluate overlap: error: "), err
        assert all(f in err for f in fragments), (fragments, err)
    assert not (tmp_path / "r.json").exists()


def test_exclusion_list_names_source_classes_keeps_earlier_ones_and_reads_back(tmp_path):
    from convert.class_exclusion import read_exclusion_list
    from convert.manifest import ExclusionRecord, Manifest, ShardRecord, TableRecord
    from evaluate import overlap_report

    manifest = Manifest(num_samples=3, num_classes=3, image_size=112, encoding="jpeg", seed=0,
                        shards=(ShardRecord("train-000000.tar", 3, 2048, "0" * 64),), source={},
                        labels=TableRecord("labels.npy", 140, "0" * 64),
                        class_map=("alice", "bob", "carol"),
                        exclusion=ExclusionRecord("/x/list.txt", "0" * 64, 1, 4, ("dave",)))
    report = {"flagged_classes": [{"source_class": overlap_report.source_class(manifest, 1)}], "threshold": 0.7,
              "checkpoint": "c.pt", "shards": "s", "val_data": "v"}
    overlap_report.write_exclusions(tmp_path / "x.txt", report, manifest)
    assert [name for _, name in read_exclusion_list(tmp_path / "x.txt").entries] == ["bob", "dave"]
    report["flagged_classes"] = [{"source_class": "#hash"}]
    with pytest.raises(overlap_report.ExclusionNameError, match="#hash"):
        overlap_report.exclusion_lines(report, manifest)
