"""A loaded backbone written as an ONNX model that carries what a user needs to feed it.

The exported graph is the `FrozenNet` as the evaluator runs it: input `images` float32 [N,3,112,112],
RGB, (x - 127.5) / 127.5 (a BGR-trained net flips its channels inside, as FrozenNet does, so the file is
always fed RGB), output `embedding` [N,D], raw (unnormalised); the batch axis is dynamic.

torch.onnx.export's TorchScript path (`dynamo=False`) is used: on these convolutional nets it gives the
same graph as the dynamo exporter, 5x faster (1.2 s against 6.1 s for mobilefacenet_s on the 2-core test
machine), without onnxscript's registry warnings; onnx.checker validates the result either way.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Mapping

import torch

from common.files import write_atomic

INPUT_NAME = "images"
OUTPUT_NAME = "embedding"
OPSET = 17  # onnxruntime >= 1.12 runs it; every op these backbones use exists there
MEAN, STD = 127.5, 127.5
INPUT_SIZE = 112


def metadata(name: str, embedding_size: int, trained_color_space: str) -> dict[str, str]:
    """The model's `metadata_props`: how to feed it and what comes out."""
    return {
        "architecture": name,
        "embedding_size": str(embedding_size),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_size": f"3x{INPUT_SIZE}x{INPUT_SIZE}",
        "channel_order": "RGB",
        "layout": "NCHW",
        "mean": str(MEAN),
        "std": str(STD),
        "preprocessing": f"aligned 112x112 face (ArcFace 5-point template), RGB, float32 (x - {MEAN}) / {STD}",
        "trained_color_space": trained_color_space,
        "output": "raw embedding (not L2-normalised)",
        "flip_fusion": "the evaluation fuses e(x) + e(flip(x)) (flip of the width axis), then L2-normalises",
    }


def export_onnx(net: torch.nn.Module, path: Path, props: Mapping[str, str]) -> Path:
    """Write `net` (RGB [N,3,112,112] -> [N,D], on the CPU, eval mode) to `path` with `props` as its
    metadata_props, checked by onnx.checker. Returns `path`."""
    import onnx

    example = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter announces its own deprecation in favour of dynamo (see the docstring).
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        torch.onnx.export(net.eval(), (example,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          do_constant_folding=True)
    model = onnx.load_from_string(buffer.getvalue())
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    model.producer_name = "adadistill (python -m models export)"
    onnx.checker.check_model(model, full_check=True)
    write_atomic(path, model.SerializeToString())
    return path
