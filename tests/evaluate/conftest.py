"""Tiny synthetic faces, sets and a small backbone for the evaluator's end-to-end tests."""
import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import pipeline


TINY_NET = "mobilefacenet_s"
TINY_EMB = 32


def identity_image(rng, identity: int, size: int = 112, noise: float = 4.0) -> bytes:
    """A smooth colour pattern fixed by `identity`, with a little per-image noise, as JPEG bytes."""
    base = np.random.default_rng(1000 + identity).integers(0, 256, (6, 6, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(base).resize((size, size), Image.Resampling.BILINEAR), np.float32)
    img = np.clip(img + noise * rng.standard_normal(img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def pair_set(pairs: int, seed: int = 0, size: int = 112):
    """(images, issame): even pairs show one identity twice, odd pairs two identities."""
    rng = np.random.default_rng(seed)
    images, issame = [], []
    for i in range(pairs):
        same = i % 2 == 0
        a = 2 * i
        images += [identity_image(rng, a, size), identity_image(rng, a if same else a + 1, size)]
        issame.append(same)
    return images, issame


def write_bin(path, images, issame) -> None:
    with open(path, "wb") as f:
        pickle.dump((images, issame), f, protocol=2)


def manual_fused(model, images):
    """(fused [N, D] numpy, xnorm) computed directly with pipeline.decode_images: the image pass's reference."""
    x = pipeline.decode_images(list(images), size=112, device="cpu")
    with torch.no_grad():
        e, ef = model(x), model(torch.flip(x, dims=[3]))
    norms = torch.cat([e.norm(dim=1), ef.norm(dim=1)]).double().mean().item()
    return (e + ef).numpy(), norms


class PoolNet(torch.nn.Module):
    """A backbone stand-in for the image-pass tests: 8x8 average pooling and a linear layer.

    Registered backbones run about 40 ms an image on the test machine's shared CPU; this one keeps
    the image-pass tests inside their time budget. The CLI tests use a registered backbone.
    """

    def __init__(self, embedding_size: int = TINY_EMB):
        super().__init__()
        self.pool = torch.nn.AvgPool2d(8)
        self.fc = torch.nn.Linear(3 * 14 * 14, embedding_size)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture(scope="session")
def tiny_model():
    torch.manual_seed(0)
    return PoolNet().eval()


def write_arrow_folder(folder, columns: dict, *, shards: int = 2) -> None:
    """A folder shaped like datasets' save_to_disk: state.json and arrow IPC stream files.

    columns: name -> list; "image" is a list of encoded bytes, stored as datasets' Image struct.
    """
    import json

    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(columns.values())))
    arrays = {}
    for name, values in columns.items():
        if name == "image":
            arrays[name] = pa.array([{"bytes": v, "path": None} for v in values],
                                    type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
        else:
            arrays[name] = pa.array(values)
    table = pa.table(arrays)
    names = []
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for k in range(shards):
        name = f"data-{k:05d}-of-{shards:05d}.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]))
        names.append({"filename": name})
    (folder / "state.json").write_text(json.dumps({"_data_files": names, "_split": None}))


def ijb_protocol_arrays():
    """(subjects, templates, medias, p1, p2, labels): 8 subjects x 2 templates x 2 images; every template
    pair is scored."""
    subjects = np.repeat(np.arange(8), 4)
    templates = np.arange(32) // 2 + 100
    medias = np.arange(32) // 2 * 10 + (np.arange(32) % 2)
    t_ids = np.unique(templates)
    t_subject = subjects[::2]
    a, b = np.triu_indices(t_ids.size, 1)
    return subjects, templates, medias, t_ids[a], t_ids[b], (t_subject[a] == t_subject[b]).astype(int)


def write_ijb_cvlface(root, name: str = "IJBC", seed: int = 1) -> dict:
    """CVLFace's layout under root: NAME_gt_aligned/ (arrow images + metadata.pt); what was written."""
    rng = np.random.default_rng(seed)
    subjects, templates, medias, p1, p2, labels = ijb_protocol_arrays()
    images = [identity_image(rng, int(s)) for s in subjects]
    faceness = rng.uniform(0.6, 1.0, 32).astype(np.float32)
    folder = root / f"{name}_gt_aligned"
    write_arrow_folder(folder, {"image": images, "index": list(range(32))})
    torch.save({"faceness_scores": faceness, "templates": templates, "medias": medias, "label": labels,
                "p1": p1, "p2": p2}, folder / "metadata.pt")
    return {"folder": folder, "images": images, "faceness": faceness, "templates": templates, "medias": medias,
            "p1": p1, "p2": p2, "labels": labels}


def write_tinyface(root, seed: int = 0) -> tuple[list, list]:
    """CVLFace's TinyFace layout under root: tinyface_aligned_pad_0.1/ with 6 identities (a probe and two
    gallery images each) and 4 distractors, stored shuffled; (paths, images) in identity order."""
    rng = np.random.default_rng(seed)
    paths, images = [], []
    for ident in range(6):
        for k in range(3):
            paths.append(f"Probe/{ident}_{k}.jpg" if k == 0 else f"Gallery_Match/{ident}_{k}.jpg")
            images.append(identity_image(rng, ident))
    for d in range(4):
        paths.append(f"Gallery_Distractor/{d}_distractor.jpg")
        images.append(identity_image(rng, 100 + d))
    order = rng.permutation(len(images))
    folder = root / "tinyface_aligned_pad_0.1"
    write_arrow_folder(folder, {
        "image": [images[i] for i in order], "index": order.tolist(), "path": [paths[i] for i in order]})
    torch.save({"image_paths": paths, "probe_paths": [p for p in paths if p.startswith("Probe")],
                "gallery_paths": [p for p in paths if p.startswith("Gallery_Match")],
                "distractor_paths": [p for p in paths if "Distractor" in p]}, folder / "metadata.pt")
    return paths, images


@pytest.fixture
def val_data(tmp_path):
    """A --val-data folder holding lfw.bin: 20 pairs of synthetic identities."""
    d = tmp_path / "val"
    d.mkdir()
    write_bin(d / "lfw.bin", *pair_set(20))
    return d
