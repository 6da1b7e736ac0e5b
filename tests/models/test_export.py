"""`python -m models export` on a tiny trained run: the folder's files, real onnxruntime inference against
the checkpoint, the CVLFace round trip, the exported model evaluated like the checkpoint, bad input."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file

import models
from evaluate import cli as evaluate_cli
from models import cli, parity
from models.check_faces import default_faces
from tests.models.export_fixtures import DIM, STUDENT, train_tiny_run

# End to end: a tiny training run (about 15 s on 2 cores) and real exports, each a few seconds.
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
REAL_FACES = ROOT.parent / "shared" / "data" / "realfaces"  # present in the project's workspace, not in a clone


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("export_run"))


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    run, _ = tiny_run
    out = tmp_path_factory.mktemp("exports") / "onnx"
    assert cli.main(["export", str(run), "--output", str(out)]) == 0
    return out


def _faces() -> torch.Tensor:
    return parity.decode(default_faces().encoded[:12])


def test_export_folder_runs_in_onnxruntime_like_the_checkpoint(tiny_run, exported):
    import onnxruntime as ort

    run, _ = tiny_run
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.onnx", "model.safetensors"]
    model = onnx.load(str(exported / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["architecture"] == STUDENT and props["embedding_size"] == str(DIM)
    assert props["channel_order"] == "RGB" and props["mean"] == props["std"] == "127.5"
    assert props["input_size"] == "3x112x112" and "flip" in props["flip_fusion"]
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name, inp.shape[1:], out.shape[1]) == ("images", "embedding", [3, 112, 112], DIM)
    assert isinstance(inp.shape[0], str)  # the dynamic batch axis
    x = _faces()
    loaded = models.load_backbone(run)
    with torch.no_grad():
        expected = loaded.net(x).numpy()
    for batch in (1, 5, 12):  # any batch size gives the same rows
        got = np.concatenate([session.run(None, {"images": x[s:s + batch].numpy()})[0] for s in range(0, 12, batch)])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    # The safetensors hold the backbone under its own key names: a strict load rebuilds it.
    net = models.build(STUDENT, DIM)
    net.load_state_dict(load_file(str(exported / "model.safetensors")), strict=True)
    with torch.no_grad():
        np.testing.assert_allclose(net.eval()(x).numpy(), expected, rtol=0, atol=1e-6)


def test_card_states_cost_parity_and_the_runs_evaluation(tiny_run, exported):
    card = (exported / "README.md").read_text()
    config = json.loads((exported / "config.json").read_text())
    assert card.startswith("---\n") and "\n---\n" in card[4:] and "library_name: onnx" in card
    cost = config["complexity"]["student"]
    assert cost["flops"] == 2 * cost["macs"] > 0 and cost["params"] == sum(
        p.numel() for p in models.build(STUDENT, DIM).parameters())
    assert f"{cost['macs'] / 1e9:.4f} G | {cost['flops'] / 1e9:.4f} G" in card and "FLOPs = 2 x MACs" in card
    p = config["parity"]
    assert p["passed"] and p["worst_cosine"] >= 0.9999 and p["batch_sizes"] == [1, 32] and p["images"] == 32
    assert f"**{p['worst_cosine']:.7f}**" in card and f"**{p['max_abs_diff']:.3g}**" in card
    record = [json.loads(line) for line in (tiny_run[0] / "metrics.jsonl").read_text().splitlines()
              if '"verification"' in line][-1]
    assert f"| metrics.jsonl | heldout | 4 | {100 * record['accuracy']:.2f} % |" in card
    assert "huggingface-cli upload" in card and "seed: 1" in card  # the training config, as saved


def test_cvlface_folder_is_the_next_runs_teacher(tiny_run, tmp_path):
    run, _ = tiny_run
    out = tmp_path / "cvlface"
    check = REAL_FACES if REAL_FACES.is_dir() else None
    assert cli.main(["export", str(run / "checkpoints" / "step-000000004.pt"), "--output", str(out),
                     "--format", "cvlface"] + (["--check-data", str(check)] if check else [])) == 0
    assert (out / "pretrained_model" / "model.yaml").is_file()
    assert all(k.startswith("model.net.") for k in load_file(str(out / "model.safetensors")))
    x = _faces()
    with torch.no_grad():
        ours, back = models.load_teacher(run)(x), models.load_teacher(out)(x)
    assert float((ours - back).abs().max()) <= 1e-5
    config = json.loads((out / "config.json").read_text())
    assert config["round_trip"]["max_abs_diff"] <= 1e-5 and config["conf"]["name"] == STUDENT
    if check:
        assert config["parity"]["images"] == 66 and config["check_data"].startswith("66 images of")


def _printed_results(capsys) -> list[str]:
    out = capsys.readouterr().out.splitlines()
    return [line for line in out if line.startswith("heldout")]


def test_exported_model_evaluates_to_the_checkpoints_accuracy(tiny_run, exported, tmp_path, capsys):
    run, pairs = tiny_run
    common = ["--val-data", str(pairs.parent), "--device", "cpu", "--batch-size", "16", "--quiet"]
    capsys.readouterr()
    assert evaluate_cli.main(["--checkpoint", str(run), "--output", str(tmp_path / "ckpt.json"), *common]) == 0
    checkpoint_lines = _printed_results(capsys)
    for spec in (exported, exported / "model.onnx"):
        assert evaluate_cli.main(["--checkpoint", str(spec), "--output", str(tmp_path / "onnx.json"), *common]) == 0
        assert _printed_results(capsys) == checkpoint_lines and checkpoint_lines
        onnx_report = json.loads((tmp_path / "onnx.json").read_text())
        assert onnx_report["checkpoint"] == str(exported / "model.onnx") and onnx_report["network"] == STUDENT
    ckpt_report = json.loads((tmp_path / "ckpt.json").read_text())
    a, b = ckpt_report["results"]["heldout"], onnx_report["results"]["heldout"]
    assert f"{a['acc']:.4f} {a['std']:.4f} {a['val']:.4f}" == f"{b['acc']:.4f} {b['std']:.4f} {b['val']:.4f}"
    # batch mode over a folder holding an export (a copy: the batch writes reports/ into it)
    folder = tmp_path / "batch"
    shutil.copytree(exported, folder)
    assert evaluate_cli.main(["batch", "--checkpoint-dir", str(folder), *common]) == 0
    assert json.loads((folder / "reports" / "model.json").read_text())["results"]["heldout"]["acc"] == a["acc"]


def test_a_failed_parity_check_leaves_nothing(tiny_run, tmp_path, monkeypatch, capsys):
    """An exporter that got a weight wrong (simulated: the last parameter, the embedding layer.s weights,
    negated in the graph written) fails the export, which leaves no folder and no temporary folder."""
    from models import onnx_export

    real = onnx_export.export_onnx

    def broken(net, path, props):
        import copy

        net = copy.deepcopy(net)
        list(net.parameters())[-1].data.mul_(-1.0)
        return real(net, path, props)

    monkeypatch.setattr(onnx_export, "export_onnx", broken)
    out = tmp_path / "out"
    assert cli.main(["export", str(tiny_run[0]), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not reproduce the checkpoint" in err and "step-000000004.pt" in err
    assert list(tmp_path.iterdir()) == []


def _bad(tmp_path: Path, name: str, obj) -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("case", ["wrong_architecture", "truncated", "head_only", "not_a_checkpoint"])
def test_bad_checkpoints_are_one_line_errors_naming_the_file(tiny_run, tmp_path, capsys, case):
    good = tiny_run[0] / "checkpoints" / "step-000000004.pt"
    state = torch.load(good, weights_only=True)
    if case == "wrong_architecture":  # iresnet_s weights under a config that says mobilefacenet_s
        path = _bad(tmp_path, "wrong.pt", {**state, "student": models.build("iresnet_s", DIM).state_dict()})
        expect = "do not fit 'mobilefacenet_s'"
    elif case == "truncated":
        path = tmp_path / "truncated.pt"
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        expect = "cannot be read safely"
    elif case == "head_only":
        path = _bad(tmp_path, "head.pt", {"head": state["head"], "step": 4})
        expect = "unrecognised checkpoint layout"
    else:
        path = tmp_path / "notes.txt"
        path.write_text("not a model\n")
        expect = "cannot be read safely"
    out = tmp_path / "out"
    assert cli.main(["export", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("python -m models export: error: ")
    assert str(path) in err and expect in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_output_format_and_check_data_are_checked_first(tiny_run, exported, tmp_path, capsys):
    run = str(tiny_run[0])
    assert cli.main(["export", run, "--output", str(exported)]) == 2  # non-empty, no --force
    assert "not empty; give --force" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["export", run, "--output", str(tmp_path / "o"), "--format", "tflite"])
    assert exit_.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    bad = tmp_path / "faces.txt"
    bad.write_text("x")
    assert cli.main(["export", run, "--output", str(tmp_path / "o"), "--check-data", str(bad)]) == 2
    assert f"{bad}: --check-data must be" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("where", ["docs/export.md", "the card"])
def test_onnxruntime_snippet_runs_on_an_export(exported, tmp_path, where):
    """The onnxruntime snippet of the project's export page (docs/export.md) and of the export's card, pasted as
    it is, beside the exported model.onnx and two aligned faces: it prints the cosine that the evaluator's fused and
    normalised embeddings give."""
    from PIL import Image

    from convert.synthetic import render

    text = (ROOT / where).read_text() if where == "docs/export.md" else (exported / "README.md").read_text()
    section = text[text.index("# Export and deploy"):] if where == "docs/export.md" else text
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    work = tmp_path / "snippet"
    work.mkdir()
    shutil.copy(exported / "model.onnx", work / "model.onnx")
    faces = render(0, 3, [0, 1])
    for name, pixels in zip(("a.png", "b.png"), faces):
        Image.fromarray(pixels).save(work / name)
    result = subprocess.run([sys.executable, "-c", snippet], cwd=work, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    from models.onnx_net import load_onnx

    net = load_onnx(exported).net
    x = parity.decode([(work / n).read_bytes() for n in ("a.png", "b.png")])
    e = (net(x) + net(x.flip(3))).numpy()
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert float(result.stdout.strip().split()[-1]) == pytest.approx(float(e[0] @ e[1]), abs=1e-5)


def test_a_bgr_iresnet_exports_fed_rgb(tmp_path, capsys):
    """A BGR-trained net (a CVLFace folder saying BGR, here an iresnet_s) exports the behaviour the evaluator
    runs: the file takes RGB and flips the channels itself, as FrozenNet does."""
    import onnxruntime as ort

    from tests.models.conftest import randomise_statistics, write_cvlface_dir

    torch.manual_seed(0)
    net = randomise_statistics(models.build("iresnet_s", 512), seed=3)
    folder = write_cvlface_dir(tmp_path / "bgr", net, name="iresnet_s", color_space="BGR")
    out = tmp_path / "out"
    assert cli.main(["export", str(folder), "--output", str(out)]) == 0
    assert "worst cosine" in capsys.readouterr().out
    x = _faces()[:4]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        bgr_fed, rgb_fed = net(x.flip(1)).numpy(), net(x).numpy()
    np.testing.assert_allclose(got, bgr_fed, rtol=1e-4, atol=1e-4 * np.abs(bgr_fed).max())
    assert np.abs(got - rgb_fed).max() > 1e-2 * np.abs(bgr_fed).max()  # the flip matters for these faces
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert (props["channel_order"], props["trained_color_space"]) == ("RGB", "BGR")
    assert "flips the channels itself" in (out / "README.md").read_text()
