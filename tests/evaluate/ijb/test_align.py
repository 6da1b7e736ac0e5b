"""IJB loose-crop alignment against a transcription of insightface's arcface_torch `eval_ijbc.py`."""
import warnings

import cv2
import numpy as np
import torch
from PIL import Image
from skimage import transform as trans

from evaluate.ijb import align, protocol as ijb_protocol
from tests.evaluate.ijb.conftest import loose_crop


def insightface_aligned(image_path: str, line: str) -> np.ndarray:
    """arcface_torch eval_ijbc.py, transcribed: `get_image_feature` reads the image and the landmarks of one
    `*_name_5pts_score.txt` line, `Embedding.get` aligns them; the RGB uint8 [112, 112, 3] face."""
    src = np.array([
        [30.2946, 51.6963],
        [65.5318, 51.5014],
        [48.0252, 71.7366],
        [33.5493, 92.3655],
        [62.7299, 92.2041]], dtype=np.float32)
    src[:, 0] += 8.0
    name_lmk_score = line.strip().split(' ')
    img = cv2.imread(image_path)
    lmk = np.array([float(x) for x in name_lmk_score[1:-1]], dtype=np.float32)
    lmk = lmk.reshape((5, 2))
    tform = trans.SimilarityTransform()
    with warnings.catch_warnings():  # scikit-image 0.26 deprecates estimate(); insightface calls it
        warnings.simplefilter("ignore", FutureWarning)
        tform.estimate(lmk, src)
    M = tform.params[0:2, :]
    img = cv2.warpAffine(img, M, (112, 112), borderValue=0.0)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _pattern(rng, h: int = 190, w: int = 200) -> np.ndarray:
    """A test pattern with detail at every scale (a checkerboard, gradients, noise): RGB uint8."""
    y, x = np.mgrid[0:h, 0:w]
    board = ((x + y) % 2) * 120
    img = np.stack([board + x * 0.6, 255 - board * 0.8 - y * 0.3, (x * y) % 256], -1)
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def test_loose_crops_align_as_insightface_does(tmp_path):
    """Through the evaluator's real path (protocol files, float32 landmarks, the batch loader), every
    aligned crop is within 1 grey level of insightface's; Pillow's affine is not."""
    rng = np.random.default_rng(7)
    root = tmp_path / "IJBB"
    (root / "loose_crop").mkdir(parents=True)
    (root / "meta").mkdir()
    names, lines = [], []
    for i in range(6):
        names.append(f"{i + 1}.jpg" if i % 2 else f"{i + 1}.png")  # JPEG (IJB's) and lossless: sharp detail
        Image.fromarray(_pattern(rng)).save(root / "loose_crop" / names[-1], quality=92)
        angle, scale, shift = rng.uniform(-0.4, 0.4), rng.uniform(0.9, 1.4), rng.uniform(10, 40, 2)
        m = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        lmk = align.ARCFACE_TEMPLATE.astype(np.float64) @ m.T + shift + rng.normal(0, 1.5, (5, 2))
        lines.append(f"{names[-1]} {' '.join(f'{v:.3f}' for v in lmk.ravel())} {rng.uniform(0.5, 1):.6f}")
    (root / "meta" / "ijbb_face_tid_mid.txt").write_text("".join(f"{n} {i} {i}\n" for i, n in enumerate(names)))
    (root / "meta" / "ijbb_name_5pts_score.txt").write_text("".join(line + "\n" for line in lines))
    (root / "meta" / "ijbb_template_pair_label.txt").write_text("0 1 0\n2 3 0\n")

    protocol = ijb_protocol.load(root, "IJBB")
    batches = align.aligned_batches(protocol.crop_root, protocol.crop_names, protocol.landmarks,
                                         batch_size=4, device=torch.device("cpu"), workers=2)
    ours = torch.cat(list(batches)).mul(127.5).add(127.5).round().permute(0, 2, 3, 1).numpy()
    theirs = np.stack([insightface_aligned(str(root / "loose_crop" / n), line) for n, line in zip(names, lines)])
    assert ours.shape == theirs.shape == (6, 112, 112, 3)
    assert np.abs(ours - theirs.astype(np.float32)).max() <= 1.0

    # The test can tell: Pillow's affine with the same matrix samples half a pixel away.
    pil = []
    for n, lmk in zip(names, protocol.landmarks):
        inv = np.linalg.inv(np.vstack([align.similarity_transform(lmk), [0, 0, 1]]))[:2]
        with Image.open(root / "loose_crop" / n) as im:
            pil.append(np.asarray(im.convert("RGB").transform((112, 112), Image.Transform.AFFINE,
                                                              data=tuple(inv.ravel()),
                                                              resample=Image.Resampling.BILINEAR), np.float32))
    pil_err = np.abs(np.stack(pil) - theirs.astype(np.float32))
    assert pil_err[1::2].mean() > 1.5 and pil_err[0::2].mean() > 5.0, (pil_err[1::2].mean(), pil_err[0::2].mean())


def test_similarity_transform_recovers_a_known_one():
    rng = np.random.default_rng(2)
    lmk = []
    loose_crop(rng, 0, lmk)
    m = align.similarity_transform(lmk[0])
    np.testing.assert_allclose(np.c_[lmk[0], np.ones(5)] @ m.T, align.ARCFACE_TEMPLATE, atol=1e-4)  # float32 points
