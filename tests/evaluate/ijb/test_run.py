"""IJB end to end with a small backbone: both layouts through the image pass, 1:1 and 1:N."""
import cv2
import numpy as np

from evaluate import report
from evaluate.ijb import align, metrics, protocol as ijb_protocol, run as ijb_run
from tests.evaluate.conftest import ijb_protocol_arrays, manual_fused, write_ijb_cvlface
from tests.evaluate.ijb.conftest import loose_crop


def test_ijb_cvlface_layout_end_to_end(tmp_path, tiny_model):
    written = write_ijb_cvlface(tmp_path, "IJBC", seed=1)
    folder, images, faceness = written["folder"], written["images"], written["faceness"]
    templates, medias, p1, p2, labels = (written[k] for k in ("templates", "medias", "p1", "p2", "labels"))
    assert ijb_protocol.find(tmp_path, "IJBC") == folder
    r = ijb_run.run(tiny_model, ijb_protocol.load(folder, "IJBC"), batch_size=8, progress=False)
    fused, _ = manual_fused(tiny_model, images)
    scores = metrics.template_scores(fused, faceness, templates, medias, p1, p2, norm=False, det=True)
    assert r["1:1"]["headline"]["tar"] == metrics.tar_at_far(scores, labels, (1e-4,))[1e-4]
    assert r["pairs"] == p1.size and "1:N" not in r
    assert "Norm:False_Det:True TAR@1e-4" in report.table({"IJBC": r})


def test_ijb_insightface_layout_with_1n(tmp_path, tiny_model):
    rng = np.random.default_rng(3)
    subjects, templates, medias, p1, p2, labels = ijb_protocol_arrays()
    root = tmp_path / "IJBB"
    (root / "loose_crop").mkdir(parents=True)
    (root / "meta").mkdir()
    lmk, faces, names = [], [], []
    for i, s in enumerate(subjects):
        png, face = loose_crop(rng, int(s), lmk)
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

    protocol = ijb_protocol.load(root, "IJBB")
    np.testing.assert_allclose(protocol.landmarks, np.stack(lmk), atol=1e-4)
    r = ijb_run.run(tiny_model, protocol, batch_size=8, progress=False)
    assert set(r["1:N"]) == {"S1", "S2"}
    assert "1:N S2 rank-1" in report.table({"IJBB": r})
    assert r["1:N"]["S1"]["mated"] == 4 and r["1:N"]["S1"]["nonmated"] == 4
    assert set(r["1:N"]["S1"]) >= {"rank-1", "rank-5", "rank-10", "tpir@fpir=0.01", "tpir@fpir=0.1"}
    # the aligned crops are the original faces again (bilinear twice: a few grey levels apart)
    aligned = [align.align(cv2.imread(str(root / "loose_crop" / n)), l) for n, l in zip(names[:4], lmk[:4])]
    err = np.abs(np.stack(aligned)[:, 8:-8, 8:-8].astype(np.float32) - np.stack(faces[:4])[:, 8:-8, 8:-8])
    assert err.mean() < 2.0, err.mean()
