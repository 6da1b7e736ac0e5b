"""A user's own data end to end, on real files: `python -m evaluate embed | pairs | threshold` and --landmarks.

Real faces come from ../shared/data/realfaces beside the repository (66 aligned faces of 14 people);
the tests that need them skip, saying so, where that folder is absent.
"""
import csv
import json
import os
import pickle
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.model_selection import KFold

import models
import pipeline
from convert import convert_rec
from convert.synthetic import write_synthetic
from evaluate import cli, verification
from evaluate.ijb.align import ARCFACE_TEMPLATE
from tests.evaluate.conftest import TINY_EMB, TINY_NET, manual_fused, write_bin, pair_set

ROOT = Path(__file__).resolve().parents[2]
REALFACES = ROOT.parent / "shared" / "data" / "realfaces"


@pytest.fixture
def realfaces():
    if not (REALFACES / "lfw6").is_dir() or not (REALFACES / "faceapi").is_dir():
        pytest.skip(f"{REALFACES} (the real-faces fixture, lfw6/ and faceapi/) is not there")
    return REALFACES


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.manual_seed(0)
    model = models.build(TINY_NET, embedding_size=TINY_EMB).eval()
    torch.save({"student": model.state_dict(), "step": 1, "epoch": 0,
                "config": {"model": {"name": TINY_NET, "embedding_size": TINY_EMB}}}, path)
    return path, model


def _run(*argv) -> int:
    return cli.main([str(a) for a in argv])


def _model_args(checkpoint):
    return ["--checkpoint", checkpoint[0], "--device", "cpu", "--batch-size", "16", "--quiet"]


def _synthetic(folder: Path, identities: int, per_identity: int, first: int = 0) -> Path:
    write_synthetic(folder, identities, per_identity, seed=0, fmt="folder", first_identity=first, workers=1)
    return folder


def _listing(bin_path: Path) -> list[dict]:
    return list(csv.DictReader(open(bin_path.with_suffix(".csv"))))


def _assert_folds_disjoint(rows: list[dict]) -> None:
    identity = [(r["first"].split("/")[0], r["second"].split("/")[0]) for r in rows]
    for k, (train, test) in enumerate(KFold(n_splits=10, shuffle=False).split(np.arange(len(rows)))):
        seen = {i for p in train for i in identity[p]}
        tested = {i for p in test for i in identity[p]}
        assert not seen & tested, f"fold {k}: identities {seen & tested} also in the other folds"
        assert {int(rows[p]["fold"]) for p in test} == {k}


# --- pairs -------------------------------------------------------------------------------------------------

def test_pairs_from_identity_folders(tmp_path, capsys):
    ids = _synthetic(tmp_path / "ids", 30, 3)
    lone = ids / "zz_one_image"
    lone.mkdir()
    (lone / "0000.jpg").write_bytes((ids / "000000" / "0000.jpg").read_bytes())
    out = tmp_path / "mine.bin"
    assert _run("pairs", ids, "--output", out, "--pairs", 101, "--seed", 3) == 0
    vset = verification.load_bin(out)  # our restricted reader, as for any insightface .bin
    with open(out, "rb") as f:
        bins, issame = pickle.load(f, encoding="bytes")  # insightface's own reader's call
    assert len(bins) == 202 and issame == vset.issame.tolist() and sum(issame) == 51
    assert verification.fold_problem(vset.issame) is None
    rows = _listing(out)
    _assert_folds_disjoint(rows)
    for n, r in enumerate(rows):  # images stored as they are; genuine = one identity, impostor = two
        assert bins[2 * n] == (ids / r["first"]).read_bytes() and bins[2 * n + 1] == (ids / r["second"]).read_bytes()
        assert (r["first"].split("/")[0] == r["second"].split("/")[0]) == issame[n] == (r["same"] == "1")
        if "zz_one_image" in (r["first"] + r["second"]):
            assert not issame[n]
    assert len({(r["first"], r["second"]) for r in rows} | {(r["second"], r["first"]) for r in rows}) == 2 * 101
    first = out.read_bytes()
    assert _run("pairs", ids, "--output", out, "--pairs", 101, "--seed", 3) == 0 and out.read_bytes() == first
    assert _run("pairs", ids, "--output", tmp_path / "other.bin", "--pairs", 101, "--seed", 4) == 0
    assert (tmp_path / "other.bin").read_bytes() != first


def test_pairs_from_real_faces(tmp_path, realfaces, capsys):
    folder = tmp_path / "people"
    folder.mkdir()
    for person in sorted((realfaces / "lfw6").iterdir()) + sorted((realfaces / "faceapi").iterdir()):
        os.symlink(person, folder / person.name)
    out = tmp_path / "real.bin"
    assert _run("pairs", folder, "--output", out, "--pairs", 40) == 2
    err = capsys.readouterr().err
    assert f"{folder}: 14 identities" in err and "at least 20 identities" in err and not out.exists()
    _synthetic(folder, 8, 3)  # 22 identities: 14 real, 8 synthetic
    assert _run("pairs", folder, "--output", out, "--pairs", 40) == 0
    rows = _listing(out)
    _assert_folds_disjoint(rows)
    vset = verification.load_bin(out)
    real = [(n, r["first"]) for n, r in enumerate(rows) if r["first"].endswith(".png")]
    assert real, "no real face was drawn"
    for n, name in real:
        assert vset.images[2 * n] == (folder / name).read_bytes()


def test_pairs_refuses_what_is_no_jpeg_or_png(tmp_path, capsys):
    ids = _synthetic(tmp_path / "ids", 20, 2)
    bmp = ids / "000003" / "0002.bmp"
    cv2.imwrite(str(bmp), np.zeros((112, 112, 3), np.uint8))
    assert _run("pairs", ids, "--output", tmp_path / "x.bin", "--pairs", 20) == 2
    assert f"{bmp}: not a JPEG or PNG" in capsys.readouterr().err
    assert _run("pairs", ids, "--output", tmp_path / "x.pkl", "--pairs", 20) == 2
    assert "NAME.bin" in capsys.readouterr().err


# --- embed -------------------------------------------------------------------------------------------------

def test_embed_real_faces_as_the_evaluation_does(tmp_path, realfaces, checkpoint):
    src = realfaces / "lfw6"
    out = tmp_path / "emb.parquet"
    assert _run("embed", *_model_args(checkpoint), "--images", src, "--output", out) == 0
    table = pq.read_table(out)
    files = sorted(p.relative_to(src).as_posix() for p in src.glob("*/*.png"))
    assert table.column("key").to_pylist() == files and table.num_rows == 26
    assert table.column("identity").to_pylist() == [f.split("/")[0] for f in files]
    names = sorted({f.split("/")[0] for f in files})
    assert table.column("label").to_pylist() == [names.index(f.split("/")[0]) for f in files]
    assert str(table.schema.field("embedding").type) == f"fixed_size_list<element: float>[{TINY_EMB}]"
    emb = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    expected, _ = manual_fused(checkpoint[1], [(src / f).read_bytes() for f in files])
    assert np.allclose(emb, expected, atol=1e-4)
    assert np.allclose(table.column("norm").to_numpy(), np.linalg.norm(emb, axis=1), rtol=1e-5)
    meta = json.loads(table.schema.metadata[b"adadistill"])
    assert meta["embedding"] == "e(x) + e(flip(x))" and meta["network"] == TINY_NET

    assert _run("embed", *_model_args(checkpoint), "--images", src, "--output", out, "--no-flip") == 0
    single = np.asarray(pq.read_table(out).column("embedding").to_pylist(), dtype=np.float32)
    with torch.no_grad():
        direct = checkpoint[1](pipeline.decode_images([(src / f).read_bytes() for f in files], device="cpu"))
    assert np.allclose(single, direct.numpy(), atol=1e-4)


def test_embed_reads_flat_folders_recs_and_bins(tmp_path, checkpoint):
    flat = tmp_path / "flat"
    _synthetic(tmp_path / "ids", 2, 2)
    flat.mkdir()
    for p in sorted((tmp_path / "ids").glob("*/*.jpg")):
        (flat / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    write_synthetic(tmp_path / "rec", 2, 2, seed=0, fmt="rec", workers=1)
    convert_rec(str(tmp_path / "rec"), str(tmp_path / "shards"), seed=0, workers=1)
    shard_labels = pipeline.ShardSamples(tmp_path / "shards").labels(np.arange(4)).tolist()
    write_bin(tmp_path / "set.bin", *pair_set(2))
    for src, keys, labels in ((flat, sorted(os.listdir(flat)), [None] * 4),
                              (tmp_path / "rec", ["1", "2", "3", "4"], [0, 0, 1, 1]),
                              (tmp_path / "shards", [f"{k:09d}" for k in range(4)], shard_labels),
                              (tmp_path / "set.bin", ["0", "1", "2", "3"], [None] * 4)):
        out = tmp_path / f"{src.name}.parquet"
        assert _run("embed", *_model_args(checkpoint), "--images", src, "--output", out) == 0, src
        table = pq.read_table(out)
        assert table.column("key").to_pylist() == keys and table.column("label").to_pylist() == labels


def test_embed_names_an_undecodable_image_or_skips_it(tmp_path, checkpoint, capsys):
    flat = tmp_path / "flat"
    _synthetic(tmp_path / "ids", 1, 3)
    flat.mkdir()
    for p in sorted((tmp_path / "ids").glob("*/*.jpg")):
        (flat / p.name).write_bytes(p.read_bytes())
    (flat / "0001b.jpg").write_bytes(b"not an image at all")
    (flat / "0002b.png").write_bytes(b"")
    out = tmp_path / "emb.parquet"
    assert _run("embed", *_model_args(checkpoint), "--images", flat, "--output", out) == 2
    err = capsys.readouterr().err
    assert f"{flat / '0001b.jpg'}: image 2 of 5 does not decode" in err and not out.exists()
    assert _run("embed", *_model_args(checkpoint), "--images", flat, "--output", out, "--skip-bad") == 0
    assert pq.read_table(out).column("key").to_pylist() == ["0000.jpg", "0001.jpg", "0002.jpg"]
    skipped = list(csv.DictReader(open(tmp_path / "skipped.csv")))
    assert [(r["position"], r["key"]) for r in skipped] == [("2", "0001b.jpg"), ("4", "0002b.png")]
    assert skipped[1]["path"] == str(flat / "0002b.png") and "empty" in skipped[1]["reason"]


# --- threshold ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_threshold_command_reports_and_draws_as_evaluate_does(tmp_path, checkpoint, capsys):
    ids = _synthetic(tmp_path / "ids", 20, 2)
    val = tmp_path / "val"
    assert _run("pairs", ids, "--output", val / "mine.bin", "--pairs", 40, "--seed", 1) == 0
    other = tmp_path / "other.pt"
    torch.manual_seed(1)
    torch.save({"student": models.build(TINY_NET, embedding_size=TINY_EMB).state_dict(), "step": 2, "epoch": 0,
                "config": {"model": {"name": TINY_NET, "embedding_size": TINY_EMB}}}, other)
    report = tmp_path / "thr.json"
    args = _model_args(checkpoint)
    args[1:2] = [checkpoint[0], other]
    assert _run("threshold", *args, "--data", val / "mine.bin", "--far", "1e-1", "--far", "1e-2",
                "--roc", tmp_path / "roc.png", "--output", report) == 0
    got = json.loads(report.read_text())
    assert [m["name"] for m in got["models"]] == ["tiny.pt", "other.pt"] and "cosine" in got["score"]
    points = got["models"][0]["results"]["mine"]["thresholds"]["far"]
    assert points["0.01"] == "too few impostor pairs for FAR 0.01 (20 pairs)"
    assert 0 < points["0.1"]["far"] <= 0.1 and -1 <= points["0.1"]["threshold"] <= 1
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(report.with_suffix(".csv"))))
    assert len(rows) == 4 and rows[1]["note"].startswith("too few")
    # python -m evaluate reports the same thresholds for the same set
    assert _run(*_model_args(checkpoint), "--val-data", val, "--output", tmp_path / "eval.json") == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())["results"]["mine"]["thresholds"]["far"]
    assert evaluated["0.1"] == points["0.1"] and list(evaluated) == ["0.1", "0.01"]


# --- landmarks ---------------------------------------------------------------------------------------------

def _photo(crop_rgb: np.ndarray, angle: float, scale: float, shift) -> tuple[np.ndarray, np.ndarray]:
    """(a 220x200 BGR 'photo' holding the aligned crop rotated, scaled and shifted; the template's five points
    carried into it): what a detector would report for the photo."""
    m = cv2.getRotationMatrix2D((56, 56), angle, scale)
    m[:, 2] += shift
    photo = cv2.warpAffine(cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2BGR), m, (200, 220), flags=cv2.INTER_CUBIC)
    points = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]
    return photo, points


def _landmarks_csv(path: Path, rows) -> None:
    path.write_text("image,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5\n"
                    + "".join(f"{name}," + ",".join(f"{v:.3f}" for v in pts.reshape(-1)) + "\n" for name, pts in rows))


def test_landmarks_align_photos_back_to_the_crops(tmp_path, realfaces, checkpoint, capsys):
    crops = sorted((realfaces / "faceapi").glob("*/*.png"))[:4]
    photos = tmp_path / "photos"
    photos.mkdir()
    rows, originals = [], []
    for n, crop in enumerate(crops):
        rgb = cv2.cvtColor(cv2.imread(str(crop)), cv2.COLOR_BGR2RGB)
        photo, pts = _photo(rgb, angle=12 * (n - 1.5), scale=1.4, shift=(30 + 5 * n, 40))
        cv2.imwrite(str(photos / f"{n}.jpg"), photo, [cv2.IMWRITE_JPEG_QUALITY, 98])
        rows.append((f"{n}.jpg", pts))
        originals.append(crop.read_bytes())
    _landmarks_csv(tmp_path / "marks.csv", rows)
    out = tmp_path / "emb.parquet"
    assert _run("embed", *_model_args(checkpoint), "--images", photos, "--output", out,
                "--landmarks", tmp_path / "marks.csv") == 0
    aligned = np.asarray(pq.read_table(out).column("embedding").to_pylist())
    expected, _ = manual_fused(checkpoint[1], originals)
    cos = np.sum(aligned * expected, 1) / np.linalg.norm(aligned, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos.min() > 0.98, cos
    assert _run("embed", *_model_args(checkpoint), "--images", photos, "--output", out) == 0  # unaligned: far off
    plain = np.asarray(pq.read_table(out).column("embedding").to_pylist())
    cos_plain = np.sum(plain * expected, 1) / np.linalg.norm(plain, axis=1) / np.linalg.norm(expected, axis=1)
    assert cos_plain.max() < cos.min()
    _landmarks_csv(tmp_path / "short.csv", rows[:3])
    assert _run("embed", *_model_args(checkpoint), "--images", photos, "--output", out,
                "--landmarks", tmp_path / "short.csv") == 2
    err = capsys.readouterr().err
    assert "short.csv: no landmarks for 1 image(s)" in err and "first '3.jpg'" in err


def test_pairs_with_landmarks_store_aligned_crops(tmp_path):
    ids = _synthetic(tmp_path / "ids", 20, 2)
    photos, rows = tmp_path / "photos", []
    for crop in sorted(ids.glob("*/*.jpg")):
        rgb = cv2.cvtColor(cv2.imread(str(crop)), cv2.COLOR_BGR2RGB)
        photo, pts = _photo(rgb, angle=-8, scale=1.25, shift=(35, 45))
        name = f"{crop.parent.name}/{crop.stem}.png"
        (photos / crop.parent.name).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(photos / name), photo)
        rows.append((name, pts))
    _landmarks_csv(tmp_path / "marks.csv", rows)
    out = tmp_path / "aligned.bin"
    assert _run("pairs", photos, "--output", out, "--pairs", 20, "--landmarks", tmp_path / "marks.csv") == 0
    vset = verification.load_bin(out)
    first = _listing(out)[0]["first"]
    stored = cv2.imdecode(np.frombuffer(vset.images[0], np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imread(str(ids / first.replace(".png", ".jpg")))
    assert vset.images[0][:8] == b"\x89PNG\r\n\x1a\n" and stored.shape == (112, 112, 3)
    assert np.abs(stored.astype(int) - original.astype(int))[8:-8, 8:-8].mean() < 4
