"""Shards for the pipeline tests, written by the real converter (convert.synthetic + convert.convert_rec), so
that the shard contract is tested end to end; and an independent reading of what they hold."""
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convert import Manifest, convert_rec
from convert.recordio import RecordReader, unpack
from convert.shard_writer import ShardWriter
from convert.synthetic import write_synthetic

IDENTITIES, PER_IDENTITY = 24, 6  # 144 images: rendering costs ~25 ms an image on this machine


@pytest.fixture(scope="session")
def source(tmp_path_factory) -> Path:
    """An insightface-layout .rec sorted by identity."""
    return Path(write_synthetic(tmp_path_factory.mktemp("rec"), IDENTITIES, PER_IDENTITY, seed=1, fmt="rec"))


@pytest.fixture(scope="session")
def jpeg_shards(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards-jpeg")
    convert_rec(source, out, samples_per_shard=50, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def raw_shards(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards-raw")
    convert_rec(source, out, samples_per_shard=50, encoding="raw", workers=1, progress=False)
    return out


def write_shards(out: Path, members, labels, *, num_classes: int, per_shard: int = 4, size: int = 112) -> Path:
    """JPEG-encoding shards of the given image members and labels, written with the converter's ShardWriter,
    labels table and Manifest: for contents the converter itself never writes (PNG bytes in a .jpg member,
    bytes that do not decode), as a foreign tool or a damaged disk could leave them."""
    from convert.labels_table import write_labels

    out.mkdir(parents=True, exist_ok=True)
    records = []
    for k, start in enumerate(range(0, len(members), per_shard)):
        writer = ShardWriter(str(out), f"train-{k:06d}", "jpg")
        for key in range(start, min(start + per_shard, len(members))):
            writer.write(key, members[key], labels[key])
        records.append(writer.close())
    Manifest(num_samples=len(members), num_classes=num_classes, image_size=size, encoding="jpeg", seed=0,
             shards=tuple(records), source={"kind": "test"},
             labels=write_labels(str(out), np.asarray(labels))).save(out)
    return out


def smooth_image(seed: int, size: int = 112) -> np.ndarray:
    """uint8 [size, size, 3]: a smooth colour pattern (decoders agree closely on it, unlike on noise)."""
    base = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR))


def encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def gpu_skip_reason():
    """Why the GPU tests cannot run here, or None when torch and DALI both see a CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return f"needs a CUDA GPU: torch {torch.__version__} finds none here"
    try:
        from nvidia.dali import backend

        if backend.GetCUDADeviceCount() < 1:
            return "needs DALI's CUDA build to see the GPU: DALI reports 0 CUDA devices"
    except (ImportError, RuntimeError) as err:
        return f"needs DALI with CUDA support: {err}"
    return None


def read_tars(shards: Path) -> dict:
    """key -> (image member bytes, label), read with tarfile: independent of the pipeline's .idx reader."""
    out = {}
    for tar in sorted(shards.glob("*.tar")):
        with tarfile.open(tar) as tf:
            members = {}
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(int(key), {})[ext] = tf.extractfile(m).read()
        for key, parts in members.items():
            image = parts["jpg"] if "jpg" in parts else parts["raw"]
            out[key] = (image, int(parts["cls"]))
    return out


def source_labels(source: Path) -> dict:
    """JPEG bytes -> the label the .rec gave them."""
    out = {}
    with RecordReader(source / "train.rec", source / "train.idx") as reader:
        header, _ = unpack(reader.read(0))
        for key in range(1, int(header.label[0])):
            h, payload = unpack(reader.read(key))
            out[payload] = int(h.label if np.isscalar(h.label) else h.label[0])
    return out


def reference_image(member: bytes, flipped: bool, size: int = 112) -> np.ndarray:
    """float32 [3,H,W] normalized like the pipeline, from a Pillow decode (or raw pixels)."""
    if member[:2] == b"\xff\xd8":
        pixels = np.array(Image.open(io.BytesIO(member)).convert("RGB"), dtype=np.float32)
    else:
        pixels = np.frombuffer(member, np.uint8).reshape(size, size, 3).astype(np.float32)
    if flipped:
        pixels = pixels[:, ::-1]
    return ((pixels - 127.5) / 127.5).transpose(2, 0, 1)


@pytest.fixture(autouse=True)
def fresh_fallback_warnings(monkeypatch):
    """The torch-backend fallback warns once per process; each test starts as a fresh process would."""
    from pipeline import backend_choice

    monkeypatch.setattr(backend_choice, "_warned", set())


def without_labels_table(shards: Path, out: Path) -> Path:
    """A copy of `shards` as the converter wrote it before the labels table existed: no labels.npy, and a
    manifest.json without `labels` (edited as JSON: a Manifest without one is no longer built)."""
    import json
    import shutil

    shutil.copytree(shards, out)
    data = json.loads((out / "manifest.json").read_text())
    (out / data.pop("labels")["name"]).unlink()
    (out / "manifest.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return out
