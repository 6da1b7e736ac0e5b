"""Shards for the pipeline tests, written by the real converter (convert.synthetic + convert.convert_rec), so
that the shard contract is tested end to end; and an independent reading of what they hold."""
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convert import convert_rec
from convert.recordio import RecordReader, unpack
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
