"""Backbones by name, and the one path from weights to a backbone.

Modules:
  registry.py       `build(name, embedding_size)`, `names()`, `register`; the shared kaiming initialisation
  iresnet.py        insightface's iresnet18/34/50/100 (arcface_torch key names) and the narrow iresnet_s
  mobilefacenet.py  AdaDistill's MobileFaceNet and the narrow mobilefacenet_s
  ir.py             CVLFace's IR family (ir18/50/101) with its checkpoints' key names
  hub.py            fetch a CVLFace repository from the Hugging Face hub (weights and description only)
  weights.py        read weights and their description from any file or folder, running no code;
                    `newest_checkpoint`, the one reader of a run's `checkpoints/latest`
  loading.py        `load_backbone(spec)`: weights -> a strictly loaded, frozen, RGB-fed net (teacher,
                    teacher cache and evaluator alike); `load_teacher(spec)` is its net
  complexity.py     parameters, MACs and FLOPs (= 2 x MACs) of a backbone at 112x112, by FlopCounterMode
  onnx_export.py    a loaded backbone as model.onnx, its preprocessing in metadata_props
  onnx_net.py       an exported model.onnx (or its folder) run by onnxruntime where a FrozenNet stands
  check_faces.py    the faces an export is checked on (a .bin, a folder, or rendered synthetic ones)
  parity.py         the exported model's embeddings against the checkpoint's (worst cosine, max |diff|)
  model_card.py     the export folder's README.md, a Hugging Face model card
  export.py         `python -m models export`: the whole export folder, written only once it passed parity
  cli.py            the `python -m models` command line (__main__ calls it)

Every backbone takes RGB [B,3,112,112] in [-1,1] and returns the raw (unnormalised) embedding [B,D].
"""
from . import complexity, ir, iresnet, mobilefacenet  # noqa: F401  (importing a module registers its builders)
from .loading import FrozenNet, LoadedBackbone, Spec, load_backbone, load_teacher
from .registry import UnknownModelError, build, names, register
from .weights import CHECKPOINTS_DIR, LATEST, CheckpointError, newest_checkpoint

__all__ = ["CHECKPOINTS_DIR", "LATEST", "CheckpointError", "FrozenNet", "LoadedBackbone", "Spec", "UnknownModelError",
           "build", "load_backbone", "load_teacher", "names", "newest_checkpoint", "register"]
