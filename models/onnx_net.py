"""An exported `model.onnx` run through onnxruntime as a module that stands where a FrozenNet stands.

`load_onnx(path)` takes a `.onnx` file or a folder written by `python -m models export` (its
`model.onnx`) and returns a `LoadedBackbone` whose `net` takes an RGB [B,3,112,112] torch tensor in
[-1,1] and returns the raw embedding [B,D] as a torch tensor on the input's device, so the evaluator's
verification, IJB and TinyFace code runs the exported file unchanged. onnxruntime's CPU provider runs
it (its CUDA provider where the input is on a GPU and the installed onnxruntime has one).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from .weights import CheckpointError

MODEL_FILE = "model.onnx"


def onnx_file(path: Union[str, Path]) -> Optional[Path]:
    """The ONNX model `path` names (a .onnx file, or an export folder holding model.onnx), else None."""
    path = Path(path)
    if path.is_file() and path.suffix == ".onnx":
        return path
    if path.is_dir() and (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    return None


class OnnxNet(nn.Module):
    """RGB [B,3,112,112] in [-1,1] -> raw embedding [B,D], computed by an onnxruntime session.

    It has no weights of its own; `anchor`, an empty parameter, tells the evaluator's image pass
    (evaluate.embed.model_device) which device the tensors it feeds should be on."""

    def __init__(self, session, name: str, color_space: str, source: str, device: torch.device) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.name, self.color_space, self.source = name, color_space, source
        self.anchor = nn.Parameter(torch.empty(0, device=device), requires_grad=False)
        self.eval()

    def train(self, mode: bool = True) -> "OnnxNet":
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.detach().float().cpu().contiguous().numpy()
        out = self.session.run(None, {self.input_name: images})[0]
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)


def _providers(device: torch.device) -> list[str]:
    import onnxruntime as ort

    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(path: Path, device: Union[str, torch.device] = "cpu", threads: int = 0):
    """An onnxruntime InferenceSession of `path` (threads 0: onnxruntime's default); CheckpointError naming
    the file if it is not a model onnxruntime can run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=_providers(torch.device(device)))
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... for a bad file
        raise CheckpointError(f"{path}: not an ONNX model onnxruntime can run ({type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''})") from error


def load_onnx(path: Union[str, Path], *, device: Union[str, torch.device] = "cpu"):
    """`path` (a .onnx file or an export folder) as a LoadedBackbone whose net is an OnnxNet."""
    from .loading import LoadedBackbone

    file = onnx_file(path)
    if file is None:
        raise CheckpointError(f"{path}: neither a .onnx file nor a folder holding {MODEL_FILE}")
    device = torch.device(device)
    sess = session(file, device)
    props = sess.get_modelmeta().custom_metadata_map
    outputs = sess.get_outputs()[0].shape
    size = props.get("embedding_size") or (outputs[1] if len(outputs) == 2 else None)
    try:
        embedding_size = int(size)
    except (TypeError, ValueError):
        raise CheckpointError(f"{file}: cannot tell the embedding size (metadata embedding_size {size!r}, "
                              f"output shape {outputs})") from None
    name = props.get("architecture", "onnx")
    net = OnnxNet(sess, name, props.get("channel_order", "RGB"), str(file), device)
    return LoadedBackbone(net, name, embedding_size, file, None)
