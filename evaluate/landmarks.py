"""Aligned 112x112 crops of a user's photos from five landmarks each, by our IJB alignment.

The landmarks file is a CSV: one row per image, the image's key in its source (the path below an
identity-folder tree, a flat folder's file name, a record or sample key), then five x,y points in
insightface's order (left eye, right eye, nose tip, left mouth corner, right mouth corner, as seen in the
image), in the image's pixels: `image,x1,y1,x2,y2,x3,y3,x4,y4,x5,y5`. A header line whose second field is no
number is skipped. Any detector's five points will do (RetinaFace, SCRFD, MTCNN, mediapipe ...).

Each image is decoded with OpenCV and warped with evaluate.ijb.align.align, the very similarity transform
(scikit-image's estimate onto the ArcFace template, cv2.warpAffine) that aligns IJB's loose crops, so the
crop is what insightface's alignment makes of the image. The crop is stored as PNG (lossless), so the
image pass decodes exactly the warped pixels.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from common.errors import InputError
from evaluate.ijb.align import align

POINTS = 5


class LandmarksError(InputError, ValueError):
    """A landmarks file that cannot be read, or whose images do not match the source's; names file and line."""


def read_landmarks(path: str | Path) -> dict[str, np.ndarray]:
    """{image key: float32 [5, 2]} from the CSV at `path`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LandmarksError(f"{path}: cannot read the landmarks file ({err})") from None
    out: dict[str, np.ndarray] = {}
    for number, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 1 + 2 * POINTS:
            raise LandmarksError(f"{path}: line {number}: expected the image and {2 * POINTS} numbers (five x,y "
                                 f"points), found {len(row)} fields")
        try:
            values = np.array([float(v) for v in row[1:]], dtype=np.float32)
        except ValueError:
            if number == 1:  # a header
                continue
            raise LandmarksError(f"{path}: line {number}: the points must be numbers, found {row[1:]}") from None
        if not np.isfinite(values).all():
            raise LandmarksError(f"{path}: line {number}: the points must be finite, found {row[1:]}")
        key = row[0].strip()
        if key in out:
            raise LandmarksError(f"{path}: line {number}: a second row for image {key!r}")
        out[key] = values.reshape(POINTS, 2)
    if not out:
        raise LandmarksError(f"{path}: no landmarks in this file")
    return out


def match(landmarks: dict, keys: Sequence[str], source: str, file: str | Path) -> np.ndarray:
    """float32 [N, 5, 2]: the points of each of `keys`; every image needs its row and every row its image."""
    missing = [k for k in keys if k not in landmarks]
    if missing:
        raise LandmarksError(f"{file}: no landmarks for {len(missing)} image(s) of {source}, first {missing[0]!r} "
                             f"(rows name images by their key: the path below the folder, the file name, or the "
                             f"record or sample key)")
    extra = set(landmarks) - set(keys)
    if extra:
        raise LandmarksError(f"{file}: {len(extra)} row(s) name no image of {source}, first {sorted(extra)[0]!r}")
    return np.stack([landmarks[k] for k in keys])


def aligned_png(encoded, landmarks: np.ndarray, where: str) -> bytes:
    """The 112x112 crop of one encoded image (bytes or uint8 array) as PNG bytes; LandmarksError naming
    `where` when it does not decode or the points fit no similarity transform."""
    data = np.frombuffer(encoded, np.uint8) if not isinstance(encoded, np.ndarray) else encoded
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)  # BGR, as the IJB alignment's cv2.imread gives it
    if image is None:
        raise LandmarksError(f"{where}: does not decode (OpenCV), so it cannot be aligned")
    try:
        face = align(image, landmarks)
    except (ValueError, cv2.error) as err:
        raise LandmarksError(f"{where}: cannot align it: {' '.join(str(err).split())}") from err
    ok, png = cv2.imencode(".png", cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"{where}: OpenCV could not encode the aligned crop as PNG")
    return png.tobytes()
