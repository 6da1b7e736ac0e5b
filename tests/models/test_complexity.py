"""models.complexity (torch's FlopCounterMode) against a second counter and a published figure, and
`python -m distill plan` stating the student's and the teacher's cost."""
from __future__ import annotations

import json

import pytest
import torch

import models
from models import complexity


def hook_macs(name: str, embedding_size: int = 512) -> int:
    """A second counter, by hand from each layer's shapes: a convolution makes out.numel() x (in/groups) x
    kh x kw multiply-accumulates, a linear layer out.numel() x in_features (everything FlopCounterMode
    counts in these nets: no other matrix products)."""
    with torch.device("meta"):
        net = models.build(name, embedding_size).eval()
    total = 0

    def count(module, inputs, out):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            total += out.numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, torch.nn.Linear):
            total += out.numel() * module.in_features

    for m in net.modules():
        m.register_forward_hook(count)
    with torch.no_grad():
        net(torch.empty(1, 3, 112, 112, device="meta"))
    return total


@pytest.mark.parametrize("name", ["mobilefacenet", "iresnet50"])
def test_flop_counter_agrees_with_a_per_layer_count(name):
    c = complexity.of_backbone(name, 512)
    assert c.flops == 2 * c.macs
    assert abs(c.macs - hook_macs(name)) <= 0.05 * c.macs


def test_figures_match_the_published_ones():
    # MobileFaceNet: 0.449 GFLOPs (2 per MAC) and 0.993 M parameters with a 128-d embedding (OpenVINO's
    # open_model_zoo face-recognition-mobilefacenet-arcface; Chen et al. 2018: 221 M MAdds). Ours differ
    # in the embedding layer only (512-d): FLOPs within 5%.
    mbf = complexity.of_backbone("mobilefacenet", 512)
    assert abs(mbf.flops - 0.449e9) <= 0.05 * 0.449e9 and 0.2e9 < mbf.macs < 0.23e9
    # iresnet50: 43.6 M parameters and 6.3 G MACs, which arcface_torch's tables (ptflops) call "GFLOPs".
    r50 = complexity.of_backbone("iresnet50", 512)
    assert abs(r50.macs - 6.3e9) <= 0.05 * 6.3e9 and abs(r50.params - 43.6e6) <= 0.01 * 43.6e6
    assert r50.flops == 2 * r50.macs


def test_counting_a_loaded_net_leaves_it_untouched():
    net = models.build("mobilefacenet_s", 32).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    c = complexity.of_module(net)
    assert c == complexity.of_backbone("mobilefacenet_s", 32) and net.training
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_plan_states_student_and_teacher_cost(tmp_path, capsys):
    from distill import cli

    argv = ["plan", "--config", "configs/ms1mv2_mbf_ir50_adaarcdistill.yaml", "--num-samples", "1000",
            "--num-classes", "10"]
    assert cli.run([*argv, "--json"]) == 0
    cost = json.loads(capsys.readouterr().out)["cost"]
    assert cost["student"] == {"name": "mobilefacenet", **complexity.of_backbone("mobilefacenet", 512).as_dict()}
    assert cost["teacher"]["name"] == "iresnet50" and cost["teacher"]["flops"] == 2 * cost["teacher"]["macs"]
    # A teacher named by a run directory of ours: its backbone is read from the checkpoint's config.
    run = tmp_path / "teacher"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"student": models.build("iresnet_s", 64).state_dict(), "step": 1,
                "config": {"model": {"name": "iresnet_s", "embedding_size": 64}}}, run / "checkpoints" / "step-1.pt")
    (run / "checkpoints" / "latest").write_text("step-1.pt\n")
    assert cli.run([*argv, f"teacher.spec={run}", "teacher.network=null"]) == 0
    out = capsys.readouterr().out
    expected = complexity.of_backbone("iresnet_s", 64)
    assert f"teacher cost     iresnet_s: {expected.params / 1e6:.2f} M parameters, {expected.macs / 1e9:.3f} GMACs" in out
