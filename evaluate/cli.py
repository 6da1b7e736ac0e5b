"""`python -m evaluate`: one checkpoint, or `batch` over a folder of checkpoints.

    python -m evaluate --checkpoint RUN_OR_FILE [--config CFG | --network NAME] [--val-data DIR]
        [--ijb-root DIR] [--tinyface-root DIR] [--targets lfw IJBC ...] [--device auto] [--batch-size N]
        [--output REPORT.json]
    python -m evaluate batch --checkpoint-dir DIR [--checkpoint-suffix .pt] [--force] (same data flags)

Without --targets every target whose data is present runs and the missing ones are listed as
skipped; a target named in --targets whose data is missing is an error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import yaml
from tqdm import tqdm

import models
import pipeline
from evaluate import report as rep
from evaluate.targets import ALL_TARGETS, DataRoots, plan, run_target


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML whose model.name/embedding_size build the backbone")
    p.add_argument("--network", help="backbone name for a bare state dict (e.g. iresnet50)")
    p.add_argument("--val-data", type=Path, help="folder of .bin files or CVLFace arrow folders")
    p.add_argument("--ijb-root", type=Path, help="folder holding IJBB/IJBC (insightface) or IJB?_gt_aligned (CVLFace)")
    p.add_argument("--tinyface-root", type=Path, help="folder holding tinyface_aligned_pad_0.1")
    p.add_argument("--targets", nargs="+", metavar="TARGET",
                   help=f"subset of: {' '.join(ALL_TARGETS)}, or the name of any other NAME.bin under "
                        "--val-data (default: all with data)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _parser_single() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate", description="Evaluate one checkpoint "
                                "(or run `python -m evaluate batch -h` for a folder of them).")
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint file, run directory or backbone .pth")
    p.add_argument("--output", type=Path, help="report JSON (default: <checkpoint folder>/reports/<name>.json)")
    _common(p)
    return p


def _parser_batch() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate batch", description="Evaluate every checkpoint in a folder.")
    p.add_argument("--checkpoint-dir", required=True, type=Path)
    p.add_argument("--checkpoint-suffix", default=None,
                   help="file name ending to pick (default: .pt and .pth; a run's checkpoints/ is searched too)")
    p.add_argument("--force", action="store_true", help="re-evaluate checkpoints that already have a report")
    _common(p)
    return p


def _model_section(config: Path) -> dict:
    """`model.name` and `model.embedding_size` of a YAML run config: the backbone of a bare state dict."""
    try:
        data = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise models.CheckpointError(f"{config}: cannot read the config: {err}") from err
    section = data.get("model") if isinstance(data, dict) else None
    if not isinstance(section, dict) or "name" not in section:
        raise models.CheckpointError(f"{config}: expected a 'model' section with 'name'")
    return section


def evaluate_checkpoint(path: Path, args) -> dict:
    """Load, run every planned target and return the report (not yet written)."""
    device = pipeline.resolve_device(args.device)
    roots = DataRoots(args.val_data, args.ijb_root, args.tinyface_root)
    to_run, skipped = plan(args.targets or ALL_TARGETS, roots, explicit=bool(args.targets))
    given = _model_section(args.config) if args.config is not None else {}
    loaded = models.load_backbone(path, network=args.network or given.get("name"),
                                  embedding_size=given.get("embedding_size"), device=device)
    results = {}
    for target, data in to_run.items():
        t0 = time.perf_counter()
        results[target] = run_target(loaded.net, target, data, device=device, batch_size=args.batch_size,
                                     progress=not args.quiet)
        results[target]["seconds"] = round(time.perf_counter() - t0, 2)
    return {"checkpoint": str(loaded.file), "network": loaded.name, "embedding_size": loaded.embedding_size,
            "step": loaded.step, "device": str(device), "results": results, "skipped": skipped,
            "protocols": {"verification": "insightface verification.evaluate (acc); VAL@FAR: largest threshold "
                                          "with training FAR <= 1e-3",
                          "ijb": "insightface eval_ijbc.py / CVLFace three configurations; headline "
                                 "Norm:False_Det:True TAR@FAR=1e-4",
                          "tinyface": "CVLFace tinyface evaluate (CMC, percent)"}}


def _print_report(report: dict) -> None:
    print(f"checkpoint {report['checkpoint']} ({report['network']}, step {report['step']})")
    if report["results"]:
        print(rep.table(report["results"]))
    for t, why in report["skipped"].items():
        print(f"skipped {t}: {why}")


def default_report_path(checkpoint: Path) -> Path:
    """<run>/reports/<name>.json for a run's checkpoints/<name>.pt, else reports/ beside the file."""
    folder = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return folder / "reports" / f"{checkpoint.stem}.json"


def main_single(argv: Sequence[str]) -> int:
    args = _parser_single().parse_args(argv)
    report = evaluate_checkpoint(args.checkpoint, args)
    out = args.output or default_report_path(Path(report["checkpoint"]))
    rep.write_json(out, report)
    _print_report(report)
    print(f"wrote {out}")
    return 0


def find_checkpoints(folder: Path, suffix: Optional[str]) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: --checkpoint-dir is not a directory")
    suffixes = (suffix,) if suffix else (".pt", ".pth")
    found = []
    for d in (folder, folder / "checkpoints"):
        if d.is_dir():
            found += [p for p in sorted(d.iterdir()) if p.is_file() and p.name.endswith(suffixes)]
    return found


def main_batch(argv: Sequence[str]) -> int:
    args = _parser_batch().parse_args(argv)
    reports_dir = args.checkpoint_dir / "reports"
    checkpoints = find_checkpoints(args.checkpoint_dir, args.checkpoint_suffix)
    if not checkpoints:
        raise FileNotFoundError(f"{args.checkpoint_dir}: no checkpoints ending in "
                                f"{args.checkpoint_suffix or '.pt/.pth'} (also looked in checkpoints/)")
    done = skipped = 0
    for ckpt in tqdm(checkpoints, desc="checkpoints", unit="ckpt", disable=args.quiet):
        out = reports_dir / f"{ckpt.stem}.json"
        if out.is_file() and not args.force:
            skipped += 1
            continue
        report = evaluate_checkpoint(ckpt, args)
        rep.write_json(out, report)
        _print_report(report)
        done += 1
    rows = []
    for ckpt in checkpoints:  # the CSV covers every evaluated checkpoint, old reports included
        path = reports_dir / f"{ckpt.stem}.json"
        if path.is_file():
            r = json.loads(path.read_text())
            rows.append({"checkpoint": r["checkpoint"], "network": r["network"], "step": r["step"]}
                        | rep.flatten(r["results"]))
    rep.write_csv(reports_dir / "summary.csv", rows)
    print(f"evaluated {done}, already done {skipped}; wrote {reports_dir / 'summary.csv'} ({len(rows)} rows)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["batch"]:
            return main_batch(argv[1:])
        return main_single(argv)
    except (models.CheckpointError, pipeline.PipelineDeviceError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
