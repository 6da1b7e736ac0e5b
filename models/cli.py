"""`python -m models export CHECKPOINT --output DIR [--format onnx|cvlface] [--check-data X] [--force]`:
a checkpoint's backbone as a deployable folder (models.export); every failure is one line, exit 2."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from common.errors import run_command

PROG = "python -m models"


def _parser() -> argparse.ArgumentParser:
    from .export import FORMATS

    p = argparse.ArgumentParser(prog=PROG, description="Tools for trained backbones.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="export a checkpoint's backbone to ONNX (+ safetensors and a model card)",
                       description="Export a checkpoint's backbone: model.onnx, model.safetensors, config.json and "
                                   "a model card README.md, checked against the checkpoint with onnxruntime.")
    e.add_argument("checkpoint", type=Path, help="a run directory (its newest checkpoint), a step-N.pt, or a weights "
                                                 "file (with --network for a bare state dict)")
    e.add_argument("--output", required=True, type=Path, help="the folder to write (refused if not empty, unless --force)")
    e.add_argument("--format", choices=FORMATS, default="onnx",
                   help="onnx: the ONNX model and plain safetensors; cvlface: the same in CVLFace's hub layout, "
                        "loadable as a teacher (default: onnx)")
    e.add_argument("--check-data", type=Path, help="aligned faces for the parity check: a .bin set or a folder of "
                                                   "images (default: 32 synthetic faces from convert.synthetic)")
    e.add_argument("--force", action="store_true", help="replace a non-empty --output")
    e.add_argument("--network", help="backbone name for a bare state dict (e.g. mobilefacenet)")
    e.add_argument("--embedding-size", type=int, help="a bare state dict's embedding size (default 512)")
    return p


def _export(args: argparse.Namespace) -> int:
    from .export import export

    done = export(args.checkpoint, args.output, fmt=args.format, check_data=args.check_data, force=args.force,
                  network=args.network, embedding_size=args.embedding_size)
    info = done.info
    print(f"exported {info['architecture']} ({info['embedding_size']}-d, step {info['step']}) from "
          f"{info['checkpoint']} to {done.folder} ({info['format']} layout)")
    print(f"cost: {info['complexity'].text()}")
    print(f"parity (onnxruntime vs torch, {info['check_data']}): {done.parity.text()}")
    if info.get("round_trip"):
        print(f"round trip (the folder loaded as a teacher): max |diff| {info['round_trip']['max_abs_diff']:.3g}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(PROG + " " + args.command, lambda: _export(args))
