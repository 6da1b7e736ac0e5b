"""Loose crops with known landmarks for the IJB alignment and end-to-end tests."""
import io

import numpy as np
from PIL import Image

from evaluate.ijb import align
from tests.evaluate.conftest import identity_image


def loose_crop(rng, identity, landmarks_out):
    """A 200x190 "photo" holding the aligned face warped by a known similarity; its landmarks."""
    face = Image.open(io.BytesIO(identity_image(rng, identity, noise=0.0)))
    angle, scale, shift = rng.uniform(-0.3, 0.3), rng.uniform(1.0, 1.3), rng.uniform(10, 30, 2)
    m = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    fwd = np.c_[m, shift]  # face coords -> photo coords
    inv = np.linalg.inv(np.vstack([fwd, [0, 0, 1]]))[:2]
    photo = face.transform((200, 190), Image.Transform.AFFINE, data=tuple(inv.ravel()),
                           resample=Image.Resampling.BILINEAR)
    landmarks_out.append(align.ARCFACE_TEMPLATE @ m.T + shift)
    buf = io.BytesIO()
    photo.save(buf, format="PNG")
    return buf.getvalue(), np.asarray(face, np.float32)
