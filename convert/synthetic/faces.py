"""Render synthetic face-like 112x112 RGB images: a stable template per identity, varied per image.

An identity's template (skin, face shape, hair, eyes, brows, nose, mouth, a smooth skin texture)
is drawn from a generator seeded by (seed, identity) only, and each image's variation (pose,
scale, yaw, expression, lighting, blur, noise) from (seed, identity, image number) only, so an
identity looks the same whichever call renders it. All images of one identity are rendered as one
numpy batch [M, 112, 112, 3].
"""
from __future__ import annotations

import numpy as np

SIZE = 112
_TEMPLATE_STREAM = 0x7E31
_IMAGE_STREAM = 0x1A6E
_CHUNK = 8


def _template(seed: int, identity: int) -> dict:
    r = np.random.default_rng([seed, _TEMPLATE_STREAM, identity])
    skin_r = r.uniform(0.45, 0.95)
    skin = np.array([skin_r, skin_r * r.uniform(0.62, 0.85), skin_r * r.uniform(0.42, 0.72)])
    hair = r.uniform(0.03, 0.6) * np.array([1.0, r.uniform(0.55, 0.95), r.uniform(0.3, 0.8)])
    t = dict(
        skin=skin,
        sclera=np.array([0.92, 0.92, 0.9]),
        face=(r.normal(0, 0.03), r.normal(0.06, 0.03), r.uniform(0.5, 0.68), r.uniform(0.66, 0.86)),
        hair=hair,
        hairline=r.uniform(0.3, 0.8),
        hair_width=r.uniform(1.0, 1.25),
        eye=(r.uniform(0.19, 0.33), r.uniform(-0.2, -0.02), r.uniform(0.07, 0.12), r.uniform(0.03, 0.06)),
        iris=r.uniform(0.05, 0.6, 3),
        brow=(r.uniform(0.08, 0.16), r.uniform(0.015, 0.04), r.uniform(0.08, 0.15), r.normal(0, 0.12)),
        nose=(r.uniform(0.13, 0.3), r.uniform(0.045, 0.1), r.uniform(0.75, 0.92)),
        mouth=(r.uniform(0.28, 0.46), r.uniform(0.12, 0.28), r.uniform(0.02, 0.05), r.normal(0, 0.6)),
        lips=skin * np.array([r.uniform(0.75, 1.05), r.uniform(0.45, 0.7), r.uniform(0.45, 0.75)]),
        # A smooth per-identity skin texture: a few low-frequency cosines (cheeks, shading).
        tex_freq=r.normal(0, 3.0, (4, 2)),
        tex_phase=r.uniform(0, 2 * np.pi, 4),
        tex_amp=r.uniform(0.02, 0.07, 4),
    )
    # float32 arrays and Python floats, so that the float32 pixel maths never widens to float64.
    for k, val in t.items():
        t[k] = tuple(float(e) for e in val) if isinstance(val, tuple) else np.asarray(val, np.float32)
    t["tex_freq"], t["tex_phase"], t["tex_amp"] = (t[k].tolist() for k in ("tex_freq", "tex_phase", "tex_amp"))
    t["hairline"], t["hair_width"] = float(t["hairline"]), float(t["hair_width"])
    return t


def _variations(seed: int, identity: int, images: np.ndarray) -> dict:
    rows = []
    for n in images:
        r = np.random.default_rng([seed, _IMAGE_STREAM, identity, int(n)])
        rows.append(
            np.concatenate(
                [
                    r.normal(0, 0.06, 2),  # shift
                    [np.exp(r.normal(0, 0.07)), r.normal(0, 0.09)],  # scale, roll
                    [r.normal(0, 0.07), r.uniform(0.55, 1.15), r.normal(0, 0.4)],  # yaw, eye opening, smile
                    [np.exp(r.normal(0, 0.22)), r.uniform(0, 0.4), r.uniform(0, 2 * np.pi)],  # gain, gradient
                    r.normal(0, 0.05, 3),  # colour cast
                    r.uniform(0.1, 0.9, 3),  # background
                    [r.uniform(0.0, 1.6), r.uniform(0.01, 0.05)],  # blur sigma (px), noise
                    [r.integers(0, 2**31)],  # noise seed
                ]
            )
        )
    v = np.array(rows, dtype=np.float32)
    keys = ["dx", "dy", "scale", "roll", "yaw", "eye_open", "smile", "gain", "grad", "grad_dir"]
    out = {k: v[:, i, None, None] for i, k in enumerate(keys)}
    out["cast"] = v[:, 10:13]
    out["bg"] = v[:, 13:16]
    out["blur"] = v[:, 16]
    out["noise"] = v[:, 17]
    out["noise_seed"] = v[:, 18].astype(np.int64)
    return out


def _ellipse(x, y, cx, cy, ax, ay, soft=0.02):
    """Soft mask of an axis-aligned ellipse, 1 inside, ramping to 0 over about `soft` units."""
    d = np.sqrt(np.square((x - cx) * (1.0 / ax)) + np.square((y - cy) * (1.0 / ay)))
    sharp = np.minimum(ax, ay) * (1.0 / soft)  # per image: never depends on the other images of a batch
    return np.clip((1.0 - d) * sharp + 0.5, 0.0, 1.0)


def _reach(ax, ay, soft) -> float:
    """How far from its centre _ellipse(.., ax, ay, soft) is non-zero (it is 0 beyond d = 1 + 0.5 / sharp)."""
    small = float(min(np.min(ax), np.min(ay)))
    return float(max(np.max(ax), np.max(ay))) * (1.0 + 0.5 * soft / small) + 0.01


def _paint(img, mask, colour):
    """Blend `colour` ([3] or [M,h,w,3]) into img [M,h,w,3] in place where mask [M,h,w] is 1."""
    img += mask[..., None] * (colour - img)


class _Canvas:
    """Face coordinates of every pixel of M images, and windows that bound a feature in all of them.

    Painting a small feature only inside the union of its bounding boxes (over the M images)
    keeps the cost proportional to the feature, not to the image.
    """

    def __init__(self, v: dict, m: int) -> None:
        grid = (np.arange(SIZE, dtype=np.float32) + 0.5) / SIZE * 2 - 1
        self.u, self.w = np.meshgrid(grid, grid)  # u: x to the right, w: y downwards; [H, W]
        self.v = v
        # Inverse similarity transform: image coordinates -> face coordinates.
        cos, sin = np.cos(v["roll"]), np.sin(v["roll"])
        ux, wy = self.u[None] - v["dx"], self.w[None] - v["dy"]
        self.x = (cos * ux + sin * wy) / v["scale"]
        self.y = (-sin * ux + cos * wy) / v["scale"]
        self.img = np.empty((m, SIZE, SIZE, 3), dtype=np.float32)

    def window(self, cx, cy, radius):
        """(img, x, y) views over the pixels within `radius` face units of (cx, cy) in any image."""
        v = self.v
        cos, sin, s = np.cos(v["roll"]), np.sin(v["roll"]), v["scale"]
        cx = np.broadcast_to(cx, s.shape)
        cy = np.broadcast_to(cy, s.shape)
        ui = s * (cos * cx - sin * cy) + v["dx"]
        wi = s * (sin * cx + cos * cy) + v["dy"]
        r = radius * s * SIZE / 2 + 2
        col = (ui + 1) / 2 * SIZE - 0.5
        row = (wi + 1) / 2 * SIZE - 0.5
        c0, c1 = max(int(np.min(col - r)), 0), min(int(np.max(col + r)) + 2, SIZE)
        r0, r1 = max(int(np.min(row - r)), 0), min(int(np.max(row + r)) + 2, SIZE)
        if c0 >= c1 or r0 >= r1:
            c0, c1, r0, r1 = 0, 0, 0, 0
        rs, cs = slice(r0, r1), slice(c0, c1)
        return self.img[:, rs, cs], self.x[:, rs, cs], self.y[:, rs, cs]


def _blur(img: np.ndarray, sigmas: np.ndarray, radius: int = 4) -> np.ndarray:
    """Separable Gaussian blur of img [M,H,W,3] with one sigma (pixels) per image, edges replicated.

    Written as 2 x 9 shifted multiply-adds rather than matrix products: no BLAS, so no BLAS
    threads fighting the worker processes for cores.
    """
    k = np.arange(-radius, radius + 1, dtype=np.float32)
    s = np.maximum(sigmas, 0.3).astype(np.float32)[:, None]
    w = np.exp(-(k[None] ** 2) / (2 * s * s))
    w = (w / w.sum(axis=1, keepdims=True))[:, :, None, None, None]  # [M, taps, 1, 1, 1]
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        p = np.pad(img, pad, mode="edge")
        n = img.shape[axis]
        take = (lambda j: p[:, j : j + n]) if axis == 1 else (lambda j: p[:, :, j : j + n])
        out = w[:, 0] * take(0)
        for j in range(1, 2 * radius + 1):
            out += w[:, j] * take(j)
        img = out
    return img


def render(seed: int, identity: int, images) -> np.ndarray:
    """uint8 [M, 112, 112, 3] RGB images number `images` of `identity`."""
    images = np.asarray(images, dtype=np.int64).reshape(-1)
    t = _template(seed, identity)
    # Chunks of a few images keep the float32 working set in cache (about 3 times faster than all at once).
    chunks = [_render(seed, identity, t, images[i : i + _CHUNK]) for i in range(0, len(images), _CHUNK)]
    return np.concatenate(chunks) if chunks else np.empty((0, SIZE, SIZE, 3), np.uint8)


def _render(seed: int, identity: int, t: dict, images: np.ndarray) -> np.ndarray:
    v = _variations(seed, identity, images)
    m = len(images)
    cv = _Canvas(v, m)
    cv.img[:] = v["bg"][:, None, None, :]
    _paint_head(cv, t)
    _paint_features(cv, t, v)
    img = _lit(cv, v, m)
    return np.ascontiguousarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8))


def _paint_head(cv: _Canvas, t: dict) -> None:
    """The identity's hair, face (skin with its texture) and fringe, painted onto the canvas."""
    fcx, fcy, fax, fay = t["face"]
    # Hair: a larger ellipse behind the face, visible around it and above the hairline.
    hw, hh = fax * t["hair_width"], fay * 1.12
    img, x, y = cv.window(fcx, fcy - 0.05, _reach(hw, hh, 0.03))
    _paint(img, _ellipse(x, y, fcx, fcy - 0.05, hw, hh, soft=0.03), t["hair"])
    img, x, y = cv.window(fcx, fcy, _reach(fax, fay, 0.025))
    face_mask = _ellipse(x, y, fcx, fcy, fax, fay, soft=0.025)
    tex = 1.0
    for f, p, a in zip(t["tex_freq"], t["tex_phase"], t["tex_amp"]):
        tex = tex + a * np.cos(f[0] * x + f[1] * y + p)
    _paint(img, face_mask, t["skin"] * tex[..., None])
    hairline_y = fcy - fay * t["hairline"]
    fringe = np.clip((hairline_y - y) / 0.03 + 0.5, 0, 1) * face_mask
    _paint(img, fringe, t["hair"])


def _paint_features(cv: _Canvas, t: dict, v: dict) -> None:
    """Eyes, brows, nose and mouth, placed by the identity and moved by each image's yaw, eyes and smile."""
    fcx, fcy = t["face"][:2]
    # Features move with yaw (the head turns, the outline barely changes).
    fx = fcx + v["yaw"]
    ex, ey, erx, ery = t["eye"]
    byo, bth, blen, btilt = t["brow"]
    for side in (-1.0, 1.0):
        cx = fx + side * ex * (1.0 - side * v["yaw"])
        img, x, y = cv.window(cx, fcy + ey, _reach(erx, ery * v["eye_open"], 0.01))
        sclera = _ellipse(x, y, cx, fcy + ey, erx, ery * v["eye_open"], soft=0.01)
        _paint(img, sclera, t["sclera"])
        _paint(img, sclera * _ellipse(x, y, cx, fcy + ey, ery * 0.9, ery * 0.9, soft=0.01), t["iris"])
        reach = _reach(blen, bth, 0.01)
        img, x, y = cv.window(cx, fcy + ey - byo, reach * (1.0 + abs(btilt)))
        by = fcy + ey - byo + side * btilt * (x - cx)
        _paint(img, _ellipse(x, y, cx, by, blen, bth, soft=0.01), t["hair"] * 0.8)
    nlen, nwid, nshade = t["nose"]
    ny = fcy + ey + 0.04 + nlen / 2
    img, x, y = cv.window(fx, ny, _reach(nwid, nlen / 2, 0.03))
    _paint(img, 0.6 * _ellipse(x, y, fx, ny, nwid, nlen / 2, soft=0.03), t["skin"] * nshade)
    my, mw, mth, mcurve = t["mouth"]
    reach = _reach(mw, mth, 0.012)
    bend = float(np.max(np.abs(mcurve + v["smile"]))) * 0.1 * (reach / mw) ** 2
    img, x, y = cv.window(fx, fcy + my, reach + bend)
    # Curved mouth: shift y by a parabola in x (smile > 0 lifts the corners).
    mouth_y = y + (mcurve + v["smile"]) * 0.1 * np.square((x - fx) / mw)
    _paint(img, _ellipse(x, mouth_y, fx, fcy + my, mw, mth, soft=0.012), t["lips"])


def _lit(cv: _Canvas, v: dict, m: int) -> np.ndarray:
    """The canvas under each image's lighting, blur and noise: float32 [m, SIZE, SIZE, 3]."""
    # Lighting: gain, a linear gradient across the image, a colour cast.
    img = cv.img
    u, w = cv.u[None], cv.w[None]
    light = v["gain"] * (1.0 + v["grad"] * (np.cos(v["grad_dir"]) * u + np.sin(v["grad_dir"]) * w))
    img *= light[..., None]
    img *= (1.0 + v["cast"])[:, None, None, :]
    img = _blur(img, v["blur"])
    for i in range(m):
        noise = np.random.default_rng(v["noise_seed"][i]).standard_normal((SIZE, SIZE, 3), dtype=np.float32)
        img[i] += v["noise"][i] * noise
    return img
