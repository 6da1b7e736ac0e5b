"""eval.every_steps: verification after every N optimizer steps (the originals' callbacks), besides or instead of
epoch ends, once per step; the paper configs evaluate the originals' sets as often as they do."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import configs
import convert
from convert.synthetic import write_pairs_bin, write_synthetic
from distill import cli

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.usefixtures("one_process")


def _steps_verified(run: Path) -> list[int]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if r.get("event") == "verification"]


def test_every_steps_and_every_epochs_verify_once_per_step(tmp_path):
    write_synthetic(tmp_path / "rec", 8, 4, seed=0, workers=1)  # 32 images: 4 steps of 8 an epoch
    convert.convert_rec(tmp_path / "rec", tmp_path / "shards", workers=1, progress=False)
    pairs = write_pairs_bin(tmp_path / "verify.bin", 4, 4, 100, seed=0, first_identity=100, workers=1)
    text = {"seed": 1, "data": {"shards": str(tmp_path / "shards")},
            "model": {"name": "mobilefacenet_s", "embedding_size": 16}, "distill": {"mode": "none", "s": 16.0},
            "train": {"batch_size": 8, "lr": 0.05, "lr_batch": 8, "epochs": 2, "max_steps": 6, "log_every": 10,
                      "checkpoint_every": 100, "precision": "fp32"},
            "eval": {"targets": [str(pairs)], "batch_size": 16}}
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(text))
    for name, every_steps, every_epochs, expected in (("steps", 3, 0, [3, 6]), ("both", 2, 1, [2, 4, 6])):
        run = tmp_path / name
        assert cli.run(["--config", str(path), f"output={run}", f"eval.every_steps={every_steps}",
                        f"eval.every_epochs={every_epochs}"]) == 0
        assert _steps_verified(run) == expected  # step 4 ends epoch 1 and is a multiple of 2: verified once


def test_the_paper_configs_evaluate_the_originals_sets_as_often():
    ada = configs.load(ROOT / "configs" / "ms1mv2_mbf_ir50_adaarcdistill.yaml").eval
    assert [Path(t).stem for t in ada.targets] == ["lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw"]
    assert (ada.every_steps, ada.every_epochs, ada.benchmarks) == (5686, 0, ())  # the .bin sets only, as the original
    seed = configs.load(ROOT / "configs" / "ms1mv2_mbf_cvlface_adafacekd_geom.yaml").eval
    assert [Path(t).stem for t in seed.targets] == ["lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw",
                                                    "vgg2_fp"]
