"""load_teacher on local files and directories: every layout gives the saved module's outputs; every failure
raises CheckpointError naming the spec, the file and the problem; no repository code runs."""
import sys
import types

import pytest
import torch
import yaml
from safetensors.torch import save_file

import models
from models import CheckpointError

from .conftest import randomise_statistics, state_of


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(3)
    return randomise_statistics(models.build("iresnet_s"), seed=4)


def assert_same_outputs(teacher, net, x, flip=False):
    with torch.no_grad():
        expected = net.eval()(x.flip(1) if flip else x)
        got = teacher(x)
    assert got.shape == (x.shape[0], 512)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def assert_frozen(teacher):
    assert isinstance(teacher, models.FrozenNet)
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()  # a parent's .train() must not unfreeze BatchNorm
    assert not any(m.training for m in teacher.modules())


def test_cvlface_directory_safetensors(cvlface_repo, ir18_net, faces):
    repo = cvlface_repo
    teacher = models.load_teacher(str(repo))
    assert teacher.name == "ir18" and teacher.color_space == "RGB"
    assert teacher.source.endswith("model.safetensors")
    assert_frozen(teacher)
    assert_same_outputs(teacher, ir18_net, faces)
    with torch.no_grad():
        assert teacher(faces).grad_fn is None
    assert not (repo / "EXECUTED").exists() and "wrapper" not in sys.modules


def test_cvlface_directory_model_pt_and_bgr(tmp_path, cvlface_repo, ir18_net, faces):
    # The shared repository's model.pt alone, described as BGR (as AdaFace-trained CVLFace models may be).
    repo = tmp_path / "repo"
    (repo / "pretrained_model").mkdir(parents=True)
    (repo / "pretrained_model" / "model.pt").symlink_to(cvlface_repo / "pretrained_model" / "model.pt")
    desc = yaml.safe_load((cvlface_repo / "pretrained_model" / "model.yaml").read_text())
    (repo / "pretrained_model" / "model.yaml").write_text(yaml.safe_dump({**desc, "color_space": "BGR"}))
    teacher = models.load_teacher(str(repo), network="ir18")
    assert teacher.color_space == "BGR" and teacher.source.endswith("model.pt")
    assert_same_outputs(teacher, ir18_net, faces, flip=True)
    with torch.no_grad():
        assert not torch.allclose(teacher(faces), ir18_net(faces), atol=1e-3)


def test_adaface_ckpt_is_bgr(tmp_path, ir18_net, faces):
    state = {f"model.{k}": v for k, v in state_of(ir18_net).items()}
    state["head.kernel"] = torch.randn(512, 10)  # the margin head travels with it and is left out
    path = tmp_path / "adaface_ir18.ckpt"
    torch.save({"epoch": 3, "state_dict": state, "hyper_parameters": {"arch": "ir_18", "head": "adaface"}}, path)
    teacher = models.load_teacher(str(path))
    assert teacher.name == "ir18" and teacher.color_space == "BGR"
    assert_same_outputs(teacher, ir18_net, faces, flip=True)


def test_lightning_ckpt_with_lightning_objects(tmp_path, small_net, faces, monkeypatch):
    """A real AdaFace .ckpt pickles Lightning's AttributeDict and callback classes next to the weights.
    Those names are bound to inert stand-ins: Lightning need not be installed, and nothing of it runs."""
    fake = types.ModuleType("pytorch_lightning.utilities.parsing")

    class AttributeDict(dict):
        def __getattr__(self, key):
            return self[key]

    class ModelCheckpoint:
        pass

    for cls in (AttributeDict, ModelCheckpoint):
        cls.__module__, cls.__qualname__ = fake.__name__, cls.__name__
        setattr(fake, cls.__name__, cls)
    packages = ["pytorch_lightning", "pytorch_lightning.utilities"]
    for name in packages:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    path = tmp_path / "adaface.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state_of(small_net).items()},
                "hyper_parameters": AttributeDict(arch="ir_50", lr=0.1),
                "callbacks": {ModelCheckpoint: {"best_model_path": "x.ckpt"}}}, path)
    for name in packages + [fake.__name__]:  # loading must not need them
        monkeypatch.delitem(sys.modules, name)
    teacher = models.load_teacher(str(path), network="iresnet_s")
    assert teacher.color_space == "BGR"
    assert_same_outputs(teacher, small_net, faces, flip=True)
    # The hyper-parameters survive as plain items: without network=, the arch names the backbone.
    assert "'ir50'" in load_error(path)


def test_arcface_torch_pth_with_network(tmp_path, small_net, faces):
    path = tmp_path / "backbone.pth"
    torch.save(state_of(small_net), path)
    teacher = models.load_teacher(str(path), network="iresnet_s")
    assert teacher.color_space == "RGB"
    assert_same_outputs(teacher, small_net, faces)


def test_ddp_prefix_and_safetensors_file(tmp_path, small_net, faces):
    path = tmp_path / "backbone.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in state_of(small_net).items()}, str(path))
    assert_same_outputs(models.load_teacher(str(path), network="iresnet_s"), small_net, faces)


def test_own_checkpoint(tmp_path, faces):
    torch.manual_seed(5)
    net = randomise_statistics(models.build("mobilefacenet_s"), seed=6)
    path = tmp_path / "step-000000100.pt"
    torch.save({"student": state_of(net), "head": {"weight": torch.zeros(3, 512)}, "step": 100,
                "config": {"model": {"name": "mobilefacenet_s", "embedding_size": 512}}}, path)
    teacher = models.load_teacher(path)  # a Path works as well as a str
    assert teacher.name == "mobilefacenet_s"
    assert_same_outputs(teacher, net, faces)


def test_run_directory_means_its_newest_checkpoint(tmp_path, faces):
    nets = [randomise_statistics(models.build("mobilefacenet_s"), seed=s) for s in (7, 8)]
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    for step, net in zip((100, 200), nets):
        torch.save({"student": state_of(net), "step": step,
                    "config": {"model": {"name": "mobilefacenet_s", "embedding_size": 512}}},
                   tmp_path / "run" / "checkpoints" / f"step-{step:09d}.pt")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-000000200.pt\n")
    teacher = models.load_teacher(str(tmp_path / "run"))
    assert teacher.source.endswith("step-000000200.pt")
    assert_same_outputs(teacher, nets[1], faces)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-000000300.pt")
    assert "names 'step-000000300.pt'" in load_error(tmp_path / "run")


def test_teacher_keeps_channels_last_and_bf16(tmp_path, small_net, faces):
    path = tmp_path / "backbone.pth"
    torch.save(state_of(small_net), path)
    teacher = models.load_teacher(str(path), network="iresnet_s").to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = teacher(faces.contiguous(memory_format=torch.channels_last))
    assert y.shape == (2, 512) and torch.isfinite(y).all()


# ---- failures ---------------------------------------------------------------------------------------

def load_error(spec, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        models.load_teacher(str(spec), **kwargs)
    message = str(info.value)
    assert str(spec) in message  # every message names the spec
    return message


def test_missing_path(tmp_path):
    message = load_error(tmp_path / "nowhere.pth")
    assert "no such file" in message and "hint" in message


@pytest.mark.parametrize("spec", ["", "hf:", "hf:noslash", "hf:a/b@", "hf:a/b/c"])
def test_malformed_spec(spec):
    with pytest.raises(CheckpointError, match="hf:<owner>/<name>|expected"):
        models.load_teacher(spec)


def test_bare_state_dict_needs_a_name(tmp_path, small_net):
    path = tmp_path / "backbone.pth"
    torch.save(state_of(small_net), path)
    message = load_error(path)
    assert "name the backbone" in message and "iresnet_s" in message and str(path) in message


def test_missing_and_unexpected_keys(tmp_path, small_net):
    state = state_of(small_net)
    del state["layer2.1.conv1.weight"]
    state["layer9.extra"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    message = load_error(path, network="iresnet_s")
    assert "1 missing key(s): layer2.1.conv1.weight" in message
    assert "1 unexpected key(s): layer9.extra" in message and str(path) in message


def test_wrong_backbone_shapes(tmp_path, small_net):
    path = tmp_path / "narrow.pth"
    torch.save(state_of(small_net), path)
    message = load_error(path, network="iresnet18")
    assert "shape mismatch" in message and "conv1.weight (file (16, 3, 3, 3), iresnet18 (64, 3, 3, 3))" in message


def test_non_finite_weight(tmp_path, small_net):
    state = state_of(small_net)
    state["layer3.0.conv2.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    message = load_error(path, network="iresnet_s")
    assert "layer3.0.conv2.weight" in message and "non-finite" in message


class Payload:
    """Unpickling this would create a file: proof that the loader ran code from the checkpoint."""

    def __init__(self, mark):
        self.mark = mark

    def __reduce__(self):
        return (open, (self.mark, "w"))


def test_pickled_code_is_refused_not_run(tmp_path, small_net):
    mark = tmp_path / "EXECUTED"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": state_of(small_net), "payload": Payload(str(mark))}, path)
    message = load_error(path, network="iresnet_s")
    assert "cannot be read safely" in message and "weights_only" in message
    ckpt = tmp_path / "evil.ckpt"  # the Lightning path binds Lightning names only
    path.rename(ckpt)
    message = load_error(ckpt, network="iresnet_s")
    assert "globals other than Lightning's: ['io.open']" in message
    assert not mark.exists()


def test_corrupt_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x00not a checkpoint" * 10)
    assert "cannot be read safely" in load_error(path, network="iresnet_s")


def test_unknown_backbone_in_own_checkpoint(tmp_path):
    path = tmp_path / "step.pt"
    torch.save({"student": {"w": torch.zeros(1)}, "config": {"model": {"name": "resnet9000", "embedding_size": 512}}},
               path)
    message = load_error(path)
    assert "resnet9000" in message and "mobilefacenet" in message


def test_adaface_ckpt_without_arch_needs_a_name(tmp_path, small_net):
    path = tmp_path / "adaface.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state_of(small_net).items()}}, path)
    assert "name the backbone" in load_error(path)


@pytest.mark.parametrize("change, expected", [
    ({"name": "vit_base_kprpe"}, "unsupported CVLFace architecture 'vit_base_kprpe'"),
    ({"color_space": "YUV"}, "color_space: expected RGB or BGR"),
    ({"input_size": [3, 224, 224]}, "input_size"),
    ({"output_dim": "big"}, "output_dim"),
])
def test_bad_cvlface_description(tmp_path, change, expected):
    repo = tmp_path / "repo"
    (repo / "pretrained_model").mkdir(parents=True)
    desc = {"name": "ir18", "output_dim": 512, "input_size": [3, 112, 112], "color_space": "RGB", **change}
    (repo / "pretrained_model" / "model.yaml").write_text(yaml.safe_dump(desc))
    message = load_error(repo)
    assert expected in message and "model.yaml" in message


def test_cvlface_description_missing_key_and_no_description(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pretrained_model").mkdir(parents=True)
    assert "not a CVLFace model directory" in load_error(repo)
    (repo / "pretrained_model" / "model.yaml").write_text(yaml.safe_dump({"name": "ir18", "output_dim": 512}))
    assert "missing keys ['input_size', 'color_space']" in load_error(repo)


def test_cvlface_directory_without_weights_or_with_other_keys(tmp_path, small_net):
    repo = tmp_path / "repo"
    (repo / "pretrained_model").mkdir(parents=True)
    (repo / "pretrained_model" / "model.yaml").write_text(yaml.safe_dump(
        {"name": "ir18", "output_dim": 512, "input_size": [3, 112, 112], "color_space": "RGB"}))
    assert "no weights" in load_error(repo)
    save_file({k: v.contiguous() for k, v in state_of(small_net).items()}, str(repo / "model.safetensors"))
    message = load_error(repo)
    assert "'model.net.'" in message and "model.safetensors" in message


def test_network_that_contradicts_the_repository(cvlface_repo):
    repo = cvlface_repo
    assert "holds 'ir18' but network='ir50'" in load_error(repo, network="ir50")


def test_bad_device(tmp_path, small_net):
    path = tmp_path / "backbone.pth"
    torch.save(state_of(small_net), path)
    assert "cannot move to device" in load_error(path, network="iresnet_s", device="no-such-device")
