"""A tiny trained run for the export tests: synthetic shards, a few steps of mobilefacenet_s, a checkpoint,
and verification records in metrics.jsonl; and a held-out .bin of pairs."""
from __future__ import annotations

import json
from pathlib import Path

import torch

import convert
from convert.synthetic import write_pairs_bin, write_synthetic

STUDENT, DIM, STEPS = "mobilefacenet_s", 32, 4


def train_tiny_run(root: Path) -> tuple[Path, Path]:
    """(run directory, held-out .bin): 4 steps of a batch of 16 over 8 identities x 8 images, evaluated on
    100 pairs of 4 held-out identities at the end of its one epoch."""
    from distill import cli

    write_synthetic(root / "rec", 8, 8, seed=0, workers=1)
    convert.convert_rec(root / "rec", root / "shards", workers=1, progress=False)
    pairs = Path(write_pairs_bin(root / "val" / "heldout.bin", 4, 4, 100, seed=0, first_identity=100, workers=1))
    run = root / "run"
    config = {"output": str(run), "seed": 1, "data": {"shards": str(root / "shards")},
              "model": {"name": STUDENT, "embedding_size": DIM}, "distill": {"mode": "none", "s": 16.0, "m": 0.2},
              "train": {"batch_size": 16, "lr": 0.05, "lr_batch": 16, "epochs": 1, "max_steps": STEPS,
                        "log_every": 1, "checkpoint_every": STEPS, "precision": "fp32", "tensorboard": False},
              "eval": {"targets": [str(pairs)], "batch_size": 16}}
    (root / "run.yaml").write_text(json.dumps(config))  # JSON is YAML
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two shared cores: OpenMP's spinning threads would slow training tenfold
    try:
        if cli.run(["--config", str(root / "run.yaml")]) != 0:
            raise RuntimeError("the tiny training run failed")
    finally:
        torch.set_num_threads(threads)
    return run, pairs
