"""`python -m evaluate`: one checkpoint, or `batch` over a folder of checkpoints.

    python -m evaluate --checkpoint RUN_OR_FILE_OR_ONNX [--config CFG | --network NAME] [--val-data DIR]
        [--ijb-root DIR] [--tinyface-root DIR] [--targets lfw IJBC ...] [--device auto] [--batch-size N]
        [--output REPORT.json]
    python -m evaluate batch --checkpoint-dir DIR [--checkpoint-suffix .pt] [--force] (same data flags)
    python -m evaluate overlap --checkpoint MODEL --shards DIR [--val-data DIR] [--people DIR ...]
        [--threshold T | --far F] [--per-class K] --output REPORT.json [--write-exclusions FILE]
        [--targets lfw ...] [--device auto] [--batch-size N]

--checkpoint may be an exported model.onnx or its folder (`python -m models export`): the same targets
run through onnxruntime (models.onnx_net), and batch mode picks up `.onnx` files too.

`overlap` audits the training shards against test sets for shared identities (evaluate/overlap_cli.py,
evaluate/overlap.py): it writes REPORT.json, REPORT.csv beside it (one row per flagged test identity and
training class) and, with --write-exclusions, the flagged classes as a list for
`python -m convert rec|folder --exclude-classes`.

Without --targets every target whose data is present runs and the missing ones are listed as
skipped; a target named in --targets whose data is missing is an error, and so is a run with no target
to run at all.

What goes wrong is said in one line on stderr, `python -m evaluate: error: <path>: <what>`, exit status 2
(common.errors.run_command), and before the work where it can be: a data root that does not exist, a
report that cannot be written. A set's file that is not what it should be (garbage, truncated, a pickle
asking for code, an image that does not decode) is named with the position in it.

Batch mode holds `<checkpoint-dir>/reports` for its life (common.files.output_lock): a second batch job
on the same folder stops at once, naming the first. A checkpoint that cannot be loaded
(models.CheckpointError: unreadable, non-finite weights, another backbone) does not stop the batch: it is
printed as failed and gets a row in summary.csv holding its `checkpoint` and, in an `error` column, the
message (its metric columns empty); once every checkpoint is done the batch exits with status 2 and one
line naming summary.csv and the failed checkpoints. It has no report JSON, so the next run tries it
again. Any other failure (a bad set, a full disk) stops the batch at once: it would fail every checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from tqdm import tqdm

from common.errors import InputError, run_command
from common.files import output_lock
import models
import pipeline
from evaluate import cli_args, model_input, output_check
from evaluate import report as rep
from evaluate.targets import (ALL_TARGETS, DataRoots, plan,
                              require_some, run_target)

PROG = "python -m evaluate"
BATCH_PROG = "python -m evaluate batch"


class NoCheckpointsError(InputError, FileNotFoundError):
    """A --checkpoint-dir that is no folder, or holds no checkpoint."""


class BatchFailedError(InputError):
    """Checkpoints of a batch that could not be evaluated (the others were)."""


def _common(p: argparse.ArgumentParser) -> None:
    cli_args.model_and_run(p)
    p.add_argument("--val-data", type=Path, help="folder of .bin files or CVLFace arrow folders")
    p.add_argument("--ijb-root", type=Path, help="folder holding IJBB/IJBC (insightface) or IJB?_gt_aligned (CVLFace)")
    p.add_argument("--tinyface-root", type=Path, help="folder holding tinyface_aligned_pad_0.1")
    p.add_argument("--targets", nargs="+", metavar="TARGET",
                   help=f"subset of: {' '.join(ALL_TARGETS)}, or the name of any other NAME.bin under "
                        "--val-data (default: all with data)")


def _parser_single() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate", description="Evaluate one checkpoint "
                                "(or run `python -m evaluate batch -h` for a folder of them, `python -m "
                                "evaluate overlap -h` for the train/test identity-overlap audit).")
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint file, run directory, backbone .pth, or "
                   "an exported model.onnx or its folder (run in onnxruntime)")
    p.add_argument("--output", type=Path, help="report JSON (default: <checkpoint folder>/reports/<name>.json)")
    _common(p)
    return p


def _parser_batch() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluate batch", description="Evaluate every checkpoint in a folder.")
    p.add_argument("--checkpoint-dir", required=True, type=Path)
    p.add_argument("--checkpoint-suffix", default=None,
                   help="file name ending to pick (default: .pt, .pth and .onnx; a run's checkpoints/ is searched too)")
    p.add_argument("--force", action="store_true", help="re-evaluate checkpoints that already have a report")
    _common(p)
    return p


def _roots(args) -> DataRoots:
    """The data roots, each checked to be a folder (MissingDataError naming it)."""
    return DataRoots(args.val_data, args.ijb_root, args.tinyface_root)


def evaluate_checkpoint(path: Path, args, *, before_run: Optional[Callable[[Path], None]] = None) -> dict:
    """Load, run every planned target and return the report (not yet written).

    before_run: called with the weights file read, after the (quick) load and before the (long) image
    passes: where the caller checks that the report can be written.
    """
    device = pipeline.resolve_device(args.device)
    roots = _roots(args)
    to_run, skipped = plan(args.targets or ALL_TARGETS, roots, explicit=bool(args.targets))
    loaded = model_input.load(path, args, device)
    require_some(to_run, roots)
    if before_run is not None:
        before_run(Path(loaded.file))
    results = {}
    for target, data in to_run.items():
        t0 = time.perf_counter()
        results[target] = run_target(loaded.net, target, data, device=device, batch_size=args.batch_size,
                                     progress=not args.quiet)
        results[target]["seconds"] = round(time.perf_counter() - t0, 2)
    return {**model_input.described(loaded), "device": str(device), "results": results, "skipped": skipped,
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
    _roots(args)
    if args.output is not None:
        output_check.check_output(args.output)
    report = evaluate_checkpoint(args.checkpoint, args, before_run=lambda file: output_check.check_output(
        args.output or default_report_path(file)))
    out = args.output or default_report_path(Path(report["checkpoint"]))
    rep.write_json(out, report)
    _print_report(report)
    print(f"wrote {out}")
    return 0


def find_checkpoints(folder: Path, suffix: Optional[str]) -> list[Path]:
    if not folder.is_dir():
        raise NoCheckpointsError(f"{folder}: --checkpoint-dir is not a directory")
    suffixes = (suffix,) if suffix else (".pt", ".pth", ".onnx")
    found = []
    for d in (folder, folder / "checkpoints"):
        if d.is_dir():
            found += [p for p in sorted(d.iterdir()) if p.is_file() and p.name.endswith(suffixes)]
    return found


def main_batch(argv: Sequence[str]) -> int:
    args = _parser_batch().parse_args(argv)
    checkpoints = find_checkpoints(args.checkpoint_dir, args.checkpoint_suffix)
    if not checkpoints:
        raise NoCheckpointsError(f"{args.checkpoint_dir}: no checkpoints ending in "
                                 f"{args.checkpoint_suffix or '.pt/.pth/.onnx'} (also looked in checkpoints/)")
    roots = _roots(args)  # the data, once for all checkpoints, before any is loaded
    require_some(plan(args.targets or ALL_TARGETS, roots, explicit=bool(args.targets))[0], roots)
    pipeline.resolve_device(args.device)
    reports_dir = args.checkpoint_dir / "reports"
    output_check.writable_folder(reports_dir, "reports")
    with output_lock(reports_dir, BATCH_PROG):
        return _batch(args, checkpoints, reports_dir)


def _batch(args, checkpoints: list[Path], reports_dir: Path) -> int:
    done = skipped = 0
    failed: dict[Path, str] = {}
    for ckpt in tqdm(checkpoints, desc="checkpoints", unit="ckpt", disable=args.quiet):
        out = reports_dir / f"{ckpt.stem}.json"
        if out.is_file() and not args.force:
            skipped += 1
            continue
        try:
            report = evaluate_checkpoint(ckpt, args)
        except models.CheckpointError as err:  # this checkpoint only: the others may be fine
            failed[ckpt] = str(err)
            print(f"failed {ckpt}: {err}")
            continue
        rep.write_json(out, report)
        _print_report(report)
        done += 1
    rows = []
    for ckpt in checkpoints:  # the CSV covers every evaluated checkpoint, old reports included
        path = reports_dir / f"{ckpt.stem}.json"
        if ckpt in failed:
            rows.append({"checkpoint": str(ckpt), "error": failed[ckpt]})
        elif path.is_file():
            r = rep.read_json(path)
            rows.append({"checkpoint": r["checkpoint"], "network": r["network"], "step": r["step"]}
                        | rep.flatten(r["results"]))
    summary = reports_dir / "summary.csv"
    rep.write_csv(summary, rows)
    print(f"evaluated {done}, already done {skipped}, failed {len(failed)}; wrote {summary} ({len(rows)} rows)")
    if failed:
        raise BatchFailedError(f"{summary}: {len(failed)} of {len(checkpoints)} checkpoint(s) could not be "
                               f"evaluated: {', '.join(p.name for p in failed)} (see their error column)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["embed"], ["pairs"], ["threshold"]):  # a user's own data: evaluate/own_data_cli.py
        from evaluate.own_data_cli import COMMANDS
        prog, command = COMMANDS[argv[0]]
        return run_command(prog, lambda: command(argv[1:]), known=(models.CheckpointError,))
    if argv[:1] == ["audit"]:  # evaluate/audit_cli.py: the data audit
        from evaluate.audit_cli import AUDIT_PROG, main_audit
        return run_command(AUDIT_PROG, lambda: main_audit(argv[1:]), known=(models.CheckpointError,))
    if argv[:1] == ["overlap"]:  # evaluate/overlap_cli.py: the train/test identity overlap audit
        from evaluate.overlap_cli import OVERLAP_PROG, main_overlap
        return run_command(OVERLAP_PROG, lambda: main_overlap(argv[1:]), known=(models.CheckpointError,))
    if argv[:1] == ["batch"]:
        return run_command(BATCH_PROG, lambda: main_batch(argv[1:]), known=(models.CheckpointError,))
    return run_command(PROG, lambda: main_single(argv), known=(models.CheckpointError,))
