"""End to end with a small backbone: .bin, TinyFace and IJB (both layouts) through the image pass."""
import io

import cv2
import numpy as np
import pytest
import sklearn.preprocessing
import torch
from PIL import Image

import pipeline
from evaluate import face_align, ijb, ijb_data, ijb_run, report, tinyface, verification
from evaluate.embed import embed_encoded
from tests.evaluate.conftest import identity_image, pair_set, write_arrow_folder, write_bin


def _manual_fused(model, images):
    x = pipeline.decode_images(list(images), size=112, device="cpu")
    with torch.no_grad():
        e, ef = model(x), model(torch.flip(x, dims=[3]))
    norms = torch.cat([e.norm(dim=1), ef.norm(dim=1)]).double().mean().item()
    return (e + ef).numpy(), norms


def test_bin_end_to_end(tmp_path, tiny_model):
    images, issame = pair_set(40, size=96)  # not 112: the pass resizes
    write_bin(tmp_path / "agedb_30.bin", images, issame)
    vs = verification.load_bin(tmp_path / "agedb_30.bin")
    r = verification.test(tiny_model, vs, batch_size=16, progress=False)
    fused, xnorm = _manual_fused(tiny_model, images)
    expected = verification.evaluate(sklearn.preprocessing.normalize(fused.astype(np.float64)), issame)
    assert {k: r[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    assert r["xnorm"] == pytest.approx(xnorm, rel=1e-5)
    assert r["pairs"] == 40 and r["acc"] >= 0.75  # one identity twice is closer than two identities


def test_embed_refuses_a_device_the_model_is_not_on(tiny_model):
    with pytest.raises(ValueError, match="move the model"):
        embed_encoded(tiny_model, pair_set(1)[0], device="meta")


def _name(identity, k):
    return f"{identity}_{k}.jpg"


def test_tinyface_end_to_end(tmp_path, tiny_model):
    rng = np.random.default_rng(0)
    paths, images = [], []
    for ident in range(6):
        for k in range(3):
            paths.append(f"Probe/{_name(ident, k)}" if k == 0 else f"Gallery_Match/{_name(ident, k)}")
            images.append(identity_image(rng, ident))
    for d in range(4):
        paths.append(f"Gallery_Distractor/{d}_distractor.jpg")
        images.append(identity_image(rng, 100 + d))
    order = rng.permutation(len(images))
    write_arrow_folder(tmp_path / "tinyface_aligned_pad_0.1", {
        "image": [images[i] for i in order], "index": order.tolist(), "path": [paths[i] for i in order]})
    torch.save({"image_paths": paths, "probe_paths": [p for p in paths if p.startswith("Probe")],
                "gallery_paths": [p for p in paths if p.startswith("Gallery_Match")],
                "distractor_paths": [p for p in paths if "Distractor" in p]},
               tmp_path / "tinyface_aligned_pad_0.1" / "metadata.pt")
    ts = tinyface.load_tinyface(tmp_path / "tinyface_aligned_pad_0.1")
    assert ts.gallery_labels.tolist() == [i for i in range(6) for _ in range(2)] + [-100] * 4
    r = tinyface.run(tiny_model, ts, batch_size=8, ranks=(1, 5), progress=False)
    fused, _ = _manual_fused(tiny_model, images)
    probe = [i for i, p in enumerate(paths) if p.startswith("Probe")]
    gallery = [i for i, p in enumerate(paths) if not p.startswith("Probe")]
    expected = tinyface.cmc(fused[probe], np.arange(6), fused[gallery], ts.gallery_labels, (1, 5))
    assert r["rank-1"] == pytest.approx(expected[1]) and r["rank-5"] == pytest.approx(expected[5])
    assert r["probes"] == 6 and r["gallery"] == 16
    assert "rank-1" in report.table({"tinyface": r})


def _ijb_protocol(rng):
    # 8 subjects x 2 templates x 2 images; every template pair is scored.
    subjects = np.repeat(np.arange(8), 4)
    templates = np.arange(32) // 2 + 100
    medias = np.arange(32) // 2 * 10 + (np.arange(32) % 2)
    t_ids = np.unique(templates)
    t_subject = subjects[::2]
    a, b = np.triu_indices(t_ids.size, 1)
    return subjects, templates, medias, t_ids[a], t_ids[b], (t_subject[a] == t_subject[b]).astype(int)


def test_ijb_cvlface_layout_end_to_end(tmp_path, tiny_model):
    rng = np.random.default_rng(1)
    subjects, templates, medias, p1, p2, labels = _ijb_protocol(rng)
    images = [identity_image(rng, int(s)) for s in subjects]
    faceness = rng.uniform(0.6, 1.0, 32).astype(np.float32)
    folder = tmp_path / "IJBC_gt_aligned"
    write_arrow_folder(folder, {"image": images, "index": list(range(32))})
    torch.save({"faceness_scores": faceness, "templates": templates, "medias": medias, "label": labels,
                "p1": p1, "p2": p2}, folder / "metadata.pt")
    assert ijb_data.find(tmp_path, "IJBC") == folder
    r = ijb_run.run(tiny_model, ijb_data.load(folder, "IJBC"), batch_size=8, progress=False)
    fused, _ = _manual_fused(tiny_model, images)
    scores = ijb.template_scores(fused, faceness, templates, medias, p1, p2, norm=False, det=True)
    assert r["1:1"]["headline"]["tar"] == ijb.tar_at_far(scores, labels, (1e-4,))[1e-4]
    assert r["pairs"] == p1.size and "1:N" not in r
    assert "Norm:False_Det:True TAR@1e-4" in report.table({"IJBC": r})


def _loose_crop(rng, identity, landmarks_out):
    """A 200x190 "photo" holding the aligned face warped by a known similarity; its landmarks."""
    face = Image.open(io.BytesIO(identity_image(rng, identity, noise=0.0)))
    angle, scale, shift = rng.uniform(-0.3, 0.3), rng.uniform(1.0, 1.3), rng.uniform(10, 30, 2)
    m = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    fwd = np.c_[m, shift]  # face coords -> photo coords
    inv = np.linalg.inv(np.vstack([fwd, [0, 0, 1]]))[:2]
    photo = face.transform((200, 190), Image.Transform.AFFINE, data=tuple(inv.ravel()),
                           resample=Image.Resampling.BILINEAR)
    landmarks_out.append(face_align.ARCFACE_TEMPLATE @ m.T + shift)
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    return buf.getvalue(), np.asarray(face, np.float32)


def test_similarity_transform_recovers_a_known_one():
    rng = np.random.default_rng(2)
    lmk = []
    _loose_crop(rng, 0, lmk)
    m = face_align.similarity_transform(lmk[0])
    np.testing.assert_allclose(np.c_[lmk[0], np.ones(5)] @ m.T, face_align.ARCFACE_TEMPLATE, atol=1e-4)  # float32 points


def test_ijb_insightface_layout_with_1n(tmp_path, tiny_model):
    rng = np.random.default_rng(3)
    subjects, templates, medias, p1, p2, labels = _ijb_protocol(rng)
    root = tmp_path / "IJBB"
    (root / "loose_crop").mkdir(parents=True)
    (root / "meta").mkdir()
    lmk, faces, names = [], [], []
    for i, s in enumerate(subjects):
        png, face = _loose_crop(rng, int(s), lmk)
        names.append(f"{i + 1}.png")
        (root / "loose_crop" / names[-1]).write_bytes(png)
        faces.append(face)
    faceness = rng.uniform(0.6, 1.0, 32)
    (root / "meta" / "ijbb_face_tid_mid.txt").write_text(
        "".join(f"{n} {t} {m}\n" for n, t, m in zip(names, templates, medias)))
    (root / "meta" / "ijbb_name_5pts_score.txt").write_text("".join(
        f"{n} {' '.join(f'{v:.4f}' for v in l.ravel())} {f:.6f}\n" for n, l, f in zip(names, lmk, faceness)))
    (root / "meta" / "ijbb_template_pair_label.txt").write_text(
        "".join(f"{a} {b} {c}\n" for a, b, c in zip(p1, p2, labels)))
    # 1:N: the first template of subjects 0-3 is gallery S1, of 4-7 gallery S2; second templates probe.
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
    first, second = templates[0::4], templates[2::4]
    (root / "meta" / "ijbb_1N_gallery_S1.csv").write_text(header + "".join(f"{t},{s},x\n" for t, s in zip(first[:4], range(4))))
    (root / "meta" / "ijbb_1N_gallery_S2.csv").write_text(header + "".join(f"{t},{s},x\n" for t, s in zip(first[4:], range(4, 8))))
    (root / "meta" / "ijbb_1N_probe_mixed.csv").write_text(header + "".join(f"{t},{s},x\n" for t, s in zip(second, range(8))))

    protocol = ijb_data.load(root, "IJBB")
    np.testing.assert_allclose(protocol.landmarks, np.stack(lmk), atol=1e-4)
    r = ijb_run.run(tiny_model, protocol, batch_size=8, progress=False)
    assert set(r["1:N"]) == {"S1", "S2"}
    assert "1:N S2 rank-1" in report.table({"IJBB": r})
    assert r["1:N"]["S1"]["mated"] == 4 and r["1:N"]["S1"]["nonmated"] == 4
    assert set(r["1:N"]["S1"]) >= {"rank-1", "rank-5", "rank-10", "tpir@fpir=0.01", "tpir@fpir=0.1"}
    # the aligned crops are the original faces again (bilinear twice: a few grey levels apart)
    aligned = [face_align.align(cv2.imread(str(root / "loose_crop" / n)), l) for n, l in zip(names[:4], lmk[:4])]
    err = np.abs(np.stack(aligned)[:, 8:-8, 8:-8].astype(np.float32) - np.stack(faces[:4])[:, 8:-8, 8:-8])
    assert err.mean() < 2.0, err.mean()
