"""The exported folder's README.md: a Hugging Face model card (YAML front matter, then Markdown).

It states what the files are, how to feed the model, its cost (parameters, MACs and FLOPs: both, since
FLOPs = 2 x MACs and quoting one as the other is AdaDistill's issue #4), the run's training config and
last evaluation results, the parity of the export with its checkpoint, and how to load it.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import yaml

from .complexity import Complexity


def _cost_row(role: str, name: str, c: Optional[Complexity], why_not: str = "") -> str:
    if c is None:
        return f"| {role} | {name} | - | - | - | {why_not} |"
    return (f"| {role} | {name} | {c.params / 1e6:.3f} M | {c.macs / 1e9:.4f} G | {c.flops / 1e9:.4f} G | "
            f"{c.input_size}x{c.input_size}, FlopCounterMode |")


def _results(evaluations: list[dict]) -> list[str]:
    if not evaluations:
        return ["The run holds no evaluation results (no `verification` records in metrics.jsonl and no report "
                "of `python -m evaluate` for this checkpoint under `<run>/reports/`). Evaluate the export itself: "
                "see below."]
    lines = ["| source | set | step | accuracy | std |", "|---|---|---|---|---|"]
    for e in evaluations:
        std = f"{100 * e['std']:.2f} %" if e.get("std") is not None else "-"
        lines.append(f"| {e['source']} | {e['set']} | {e.get('step', '-')} | {100 * e['accuracy']:.2f} % | {std} |")
    return lines


def card(info: Mapping[str, Any]) -> str:
    """The card of an export described by `info` (models.export builds it)."""
    return "\n".join(_about(info) + _checks(info) + _usage(info))


def _about(info: Mapping[str, Any]) -> list[str]:
    """Front matter and title, the files, the input and output, the cost of the model (and its teacher)."""
    name, dim = info["architecture"], info["embedding_size"]
    front = {"library_name": "onnx", "pipeline_tag": "image-feature-extraction",
             "tags": ["face-recognition", "knowledge-distillation", "adadistill", "onnx", name],
             "license": "cc-by-nc-sa-4.0"}
    files = info["files"]
    student, teacher = info["complexity"], info.get("teacher")
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {name} face embedding ({dim}-d), exported by AdaDistill", "",
             f"Exported from `{info['checkpoint']}`" + (f" (training step {info['step']})" if info.get("step") is not None
                                                      else "") + f" by `python -m models export` ({info['format']} layout).",
             "", "## Files", ""]
    lines += [f"- `{f}`: {what}" for f, what in files.items()]
    lines += ["", "This folder is what `huggingface-cli upload <user>/<repo> <this folder>` takes (no upload code of "
              "our own).", "", "## Input and output", "",
              "- input `images`: float32 `[N, 3, 112, 112]`, an aligned face (ArcFace 5-point template, 112x112), "
              "**RGB**, `(x - 127.5) / 127.5`; the batch axis N is dynamic."
              + (" The net was trained on BGR input: the exported graph flips the channels itself, feed RGB."
                 if info["trained_color_space"] == "BGR" else ""),
              "- output `embedding`: float32 `[N, " + str(dim) + "]`, raw (not L2-normalised).",
              "- The evaluation fuses the embedding of the image and of its mirror, `e(x) + e(flip(x))` (flip of "
              "the width axis), then L2-normalises; compare faces by the cosine of those.",
              "- The same facts are in `model.onnx`'s `metadata_props`.", "",
              "## Cost", "", "FLOPs = 2 x MACs (FlopCounterMode counts 2 FLOPs per multiply-accumulate of every "
              "convolution and matrix product; BatchNorm, PReLU and additions are not counted). Model zoos that "
              "quote \"GFLOPs\" from ptflops (arcface_torch) quote MACs.", "",
              "| role | backbone | parameters | MACs | FLOPs | counted at |", "|---|---|---|---|---|---|",
              _cost_row("student (this model)", name, student)]
    if teacher is not None:
        lines.append(_cost_row("teacher", teacher["name"], teacher.get("complexity"), teacher.get("why_not", "")))
    return lines


def _checks(info: Mapping[str, Any]) -> list[str]:
    """The parity checks made at export, and the run's evaluation results."""
    parity = info["parity"]
    lines = ["", "## Parity with the checkpoint", "",
              f"Checked at export on {info['check_data']}, decoded as the evaluator decodes them "
              f"(pipeline.decode_images): onnxruntime {info['onnxruntime']} (CPUExecutionProvider) against torch "
              f"{info['torch']} on the checkpoint.", "",
              f"- ONNX: worst cosine similarity **{parity['worst_cosine']:.7f}**, largest absolute difference "
              f"**{parity['max_abs_diff']:.3g}** (embedding values up to {parity['max_abs_embedding']:.3g}), batch sizes "
              f"{', '.join(map(str, parity['batch_sizes']))}; the export fails below cosine {parity['min_cosine']}."]
    if info.get("round_trip") is not None:
        rt = info["round_trip"]
        lines.append(f"- This folder loaded back as a teacher (`models.load_teacher`): largest absolute difference "
                     f"{rt['max_abs_diff']:.3g} against the checkpoint (required: <= {rt['tolerance']:.3g}, 1e-5 of the "
                     "largest embedding value).")
    lines += ["", "## Evaluation results of the run", ""] + _results(info["evaluations"])
    return lines


def _usage(info: Mapping[str, Any]) -> list[str]:
    """How to run the export (onnxruntime, our commands), and the training config."""
    lines = ["", "## How to use", "", "With onnxruntime (no torch needed):", "", "```python",
              "import numpy as np, onnxruntime as ort",
              "from PIL import Image",
              "session = ort.InferenceSession(\"model.onnx\", providers=[\"CPUExecutionProvider\"])",
              "def embed(path):  # an aligned 112x112 face",
              "    x = (np.asarray(Image.open(path).convert(\"RGB\"), np.float32) - 127.5) / 127.5",
              "    x = x.transpose(2, 0, 1)[None]  # [1, 3, 112, 112], RGB",
              "    e = session.run(None, {\"images\": np.concatenate([x, x[..., ::-1]])})[0].sum(0)",
              "    return e / np.linalg.norm(e)  # e(x) + e(flip(x)), normalised",
              "print(\"cosine:\", float(embed(\"a.png\") @ embed(\"b.png\")))", "```", "",
              "With AdaDistill's own commands (the folder or its `model.onnx` as `--checkpoint` runs the evaluator "
              "through onnxruntime):", "", "```bash",
              "python -m evaluate --checkpoint <this folder> --val-data <folder of .bin sets>"]
    if info["format"] == "cvlface":
        lines.append("python -m distill --config <cfg> teacher.spec=<this folder>   # the next run's teacher")
    lines += ["```", "", "## Training config", "", "The run's effective config as saved in the checkpoint:", "",
              "```yaml", yaml.safe_dump(info["config"], sort_keys=False).strip() if info.get("config") else
              "# (the checkpoint holds no config: a bare state dict)", "```", ""]
    return lines
