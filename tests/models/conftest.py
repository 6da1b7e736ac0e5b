"""Fixtures for the models tests: small trained-looking nets and teacher repositories in their real layouts."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict

import pytest
import torch
import yaml
from safetensors.torch import save_file

import models

# A repository file that must never run: importing or executing it leaves a mark and fails loudly.
TRIPWIRE = """\
import pathlib
pathlib.Path({mark!r}).write_text("executed")
raise SystemExit("repository code was executed: " + __file__)
"""


def randomise_statistics(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN non-trivial running statistics and every PReLU a distinct slope, so that a load that
    dropped or mixed up any of them changes the output."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if m.affine and m.weight.requires_grad:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        elif isinstance(m, torch.nn.PReLU):
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
    return net.eval()


@pytest.fixture(scope="session")
def ir18_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomise_statistics(models.build("ir18"), seed=1)


@pytest.fixture(scope="session")
def cvlface_repo(tmp_path_factory: pytest.TempPathFactory, ir18_net: torch.nn.Module) -> Path:
    """One RGB ir18 CVLFace repository with both weight files, shared (read-only) by the tests."""
    return write_cvlface_dir(tmp_path_factory.mktemp("cvlface") / "repo", ir18_net, weights="both")


@pytest.fixture(scope="session")
def faces() -> torch.Tensor:
    return torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(2)) * 2 - 1


def write_cvlface_dir(root: Path, net: torch.nn.Module, *, name: str = "ir18", color_space: str = "RGB",
                      weights: str = "safetensors") -> Path:
    """A CVLFace hub repository as published: config.json, wrapper.py, models/ code, model.safetensors
    (`model.net.` keys) and/or pretrained_model/model.pt (`net.` keys), pretrained_model/model.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    mark = str(root / "EXECUTED")
    conf = {"name": name, "output_dim": 512, "input_size": [3, 112, 112], "color_space": color_space,
            "start_from": "", "freeze": False}
    (root / "config.json").write_text(json.dumps({
        "architectures": ["CVLFaceRecognitionModel"], "auto_map": {"AutoModel": "wrapper.CVLFaceRecognitionModel"},
        "conf": conf, "model_type": "cvlface"}))
    (root / "wrapper.py").write_text(TRIPWIRE.format(mark=mark))
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "__init__.py").write_text(TRIPWIRE.format(mark=mark))
    (root / "pretrained_model").mkdir(exist_ok=True)
    (root / "pretrained_model" / "model.yaml").write_text(yaml.safe_dump(conf))
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    if weights in ("safetensors", "both"):
        save_file({f"model.net.{k}": v for k, v in state.items()}, str(root / "model.safetensors"),
                  metadata={"format": "pt"})
    if weights in ("pt", "both"):
        torch.save({f"net.{k}": v for k, v in state.items()}, root / "pretrained_model" / "model.pt")
    return root


def write_hub_cache(hub_cache: Path, repo_id: str, source: Path, commit: str) -> Path:
    """Lay `source` out as huggingface_hub's cache does: models--<owner>--<name>/{blobs/<sha256>,
    snapshots/<commit>/<path> -> ../../blobs/<sha256>, refs/main = <commit>}."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        rel = file.relative_to(source)
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            os.link(file, blob)  # same file system (pytest's tmp folders); saves copying 96 MB
        link = repo / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return repo


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache in offline mode, for this process. huggingface_hub reads HF_HOME and
    HF_HUB_OFFLINE once at import, so the in-process tests set its constants; test_hub.py also runs the
    real environment variables in a fresh interpreter."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def state_of(net: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}
