"""`hf:` teachers through the real huggingface_hub path, from a hub cache laid out as the library lays it out,
offline: the same outputs as the saved module, only the described files requested, no repository code run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
import yaml

import models
from models import CheckpointError, hub

from .conftest import write_hub_cache

REPO_ID = "tester/cvlface_ir18"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

CHILD = """
import json, sys, torch, models
x = torch.load(sys.argv[1], weights_only=True)
outputs = {}
for spec in json.loads(sys.argv[2]):
    teacher = models.load_teacher(spec)
    with torch.no_grad():
        outputs[spec] = teacher(x)
assert not any(name == "wrapper" or name.startswith("wrapper.") for name in sys.modules), "wrapper imported"
torch.save(outputs, sys.argv[3])
"""


def test_hf_spec_from_hf_home_offline_in_a_fresh_process(tmp_path, cvlface_repo, ir18_net, faces):
    hf_home = tmp_path / "hf_home"
    repo = write_hub_cache(hf_home / "hub", REPO_ID, cvlface_repo, COMMIT)
    torch.save(faces, tmp_path / "faces.pt")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="2")
    specs = [f"hf:{REPO_ID}"]  # refs/main -> snapshots/<commit>; the in-process test below pins a commit
    result = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "faces.pt"), json.dumps(specs),
                             str(tmp_path / "out.pt")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = torch.load(tmp_path / "out.pt", weights_only=True)
    with torch.no_grad():
        expected = ir18_net(faces)
    for spec in specs:
        torch.testing.assert_close(outputs[spec], expected, rtol=1e-5, atol=1e-5)
    # The snapshot holds wrapper.py and models/__init__.py, each of which would leave this mark.
    assert (repo / "snapshots" / COMMIT / "wrapper.py").exists()
    assert not (cvlface_repo / "EXECUTED").exists()


def test_hf_spec_in_process_bgr_and_only_described_files_requested(offline_hub, tmp_path, cvlface_repo, ir18_net,
                                                                   faces, monkeypatch):
    source = tmp_path / "bgr_repo"
    (source / "pretrained_model").mkdir(parents=True)
    os.link(cvlface_repo / "model.safetensors", source / "model.safetensors")
    desc = yaml.safe_load((cvlface_repo / "pretrained_model" / "model.yaml").read_text())
    (source / "pretrained_model" / "model.yaml").write_text(yaml.safe_dump({**desc, "color_space": "BGR"}))
    (source / "wrapper.py").write_text((cvlface_repo / "wrapper.py").read_text())
    write_hub_cache(offline_hub, "tester/bgr", source, COMMIT)

    calls = []
    real = huggingface_hub.snapshot_download

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    teacher = models.load_teacher(f"hf:tester/bgr@{COMMIT}")
    assert calls == [{"revision": COMMIT, "allow_patterns": list(hub.ALLOW_PATTERNS)}]
    assert not any(p.endswith(".py") or p.endswith(".pt") for p in calls[0]["allow_patterns"])
    assert teacher.color_space == "BGR" and not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        torch.testing.assert_close(teacher(faces), ir18_net(faces.flip(1)), rtol=1e-5, atol=1e-5)
    assert not (cvlface_repo / "EXECUTED").exists()


def test_nothing_cached_offline(offline_hub):
    with pytest.raises(CheckpointError) as info:
        models.load_teacher("hf:tester/absent")
    message = str(info.value)
    assert "hf:tester/absent" in message and "tester/absent@main" in message
    assert "HF_TOKEN" in message and "hf download tester/absent" in message and "HF_HUB_OFFLINE" in message


def test_unknown_revision_offline(offline_hub, tmp_path):
    source = tmp_path / "tiny"
    source.mkdir()
    (source / "config.json").write_text("{}")
    write_hub_cache(offline_hub, "tester/tiny", source, COMMIT)
    with pytest.raises(CheckpointError, match=r"tester/tiny@v9.*--revision v9"):
        models.load_teacher("hf:tester/tiny@v9")


def test_cached_repo_that_is_not_a_cvlface_model(offline_hub, tmp_path):
    source = tmp_path / "other"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"model_type": "bert"}))
    write_hub_cache(offline_hub, "tester/other", source, COMMIT)
    with pytest.raises(CheckpointError, match="not a CVLFace model directory") as info:
        models.load_teacher("hf:tester/other")
    assert str(Path(offline_hub)) in str(info.value)
