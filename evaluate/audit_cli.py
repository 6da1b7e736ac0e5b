"""`python -m evaluate audit SHARDS [SHARDS ...] --checkpoint M --output DIR`: the data audit's command.

    [--per-class K] [--conflict-threshold T] [--outlier-threshold T] [--far 1e-5] [--stranger-rate 1e-2]
    (+ the model and run options of every evaluate command: --config, --network, --device, --batch-size,
    --quiet)

M is loaded as `python -m evaluate --checkpoint` loads it (evaluate.model_input.load: a checkpoint, a run
directory, a backbone file, or a teacher spec such as hf:...). What it finds and how: evaluate/audit.py;
what it writes: evaluate/audit_report.py.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence


from common.errors import InputError
from common.files import write_atomic
import pipeline
from convert.manifest import Manifest
from convert.source_keys import SourceKeysError, source_keys
from evaluate import audit, audit_report, impostor_threshold
from evaluate import cli_args, model_input
from evaluate import report as rep
from evaluate.output_check import writable_folder

AUDIT_PROG = "python -m evaluate audit"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=AUDIT_PROG, description="Find one person under two labels (conflicts), "
                                "mislabelled images (outliers) and duplicates in shard sets; write a report, a "
                                "page to review and the decision files for python -m convert (evaluate/audit.py).")
    p.add_argument("shards", nargs="+", type=Path, metavar="SHARDS", help="shard directories (python -m convert)")
    p.add_argument("--checkpoint", required=True, help="checkpoint file, run directory, backbone .pth or hf:...")
    p.add_argument("--output", required=True, type=Path, help="folder for audit.json, the CSVs, index.html")
    p.add_argument("--per-class", type=cli_args.positive_int, default=None, metavar="K",
                   help="images embedded per class, its first K by key (default: all)")
    p.add_argument("--conflict-threshold", type=cli_args.finite_float, default=None,
                   help="centre cosine above which two classes conflict (default: the impostor rule)")
    p.add_argument("--outlier-threshold", type=cli_args.finite_float, default=None,
                   help="own-centre cosine below which an image is an outlier (default: the stranger rule)")
    p.add_argument("--far", type=cli_args.far, default=impostor_threshold.TARGET_FAR,
                   help=f"the impostor rule's false-accept rate (default {impostor_threshold.TARGET_FAR:g})")
    p.add_argument("--stranger-rate", type=cli_args.far, default=impostor_threshold.STRANGER_RATE,
                   help=f"the outlier (stranger) rule's rate: the share of images of other classes closer to a "
                        f"class's centre than its outliers, about the share of wrong labels missed (default "
                        f"{impostor_threshold.STRANGER_RATE:g})")
    cli_args.model_and_run(p)
    return p


def _set_names(dirs: Sequence[Path]) -> list:
    names = []
    for d in dirs:
        base = Path(d).resolve().name or "shards"
        names.append(base if base not in names else f"{base}-{len(names) + 1}")
    return names


def main_audit(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    if args.output.exists() and not args.output.is_dir():
        raise InputError(f"{args.output}: --output must be a folder, found a file")
    writable_folder(args.output, "the audit")
    manifests = [Manifest.load(d) for d in args.shards]  # a missing or bad set fails before the model loads
    samples = [pipeline.ShardSamples(d) for d in args.shards]
    names = _set_names(args.shards)
    device = pipeline.resolve_device(args.device)
    loaded = model_input.load(Path(args.checkpoint), args, device)
    progress = not args.quiet
    warnings, sets = [], []
    for d, name, m, smp in zip(args.shards, names, manifests, samples):
        try:
            keys = source_keys(d, smp)
        except SourceKeysError as err:  # the report still names shard keys; only the key list cannot be written
            keys = None
            warnings.append(f"{name}: no exclude-keys.txt: {err}")
        sets.append({"name": name, "shards": d, "manifest": m, "source_keys": keys})

    t0 = time.perf_counter()
    e = audit.embed_sets(loaded.net, samples, per_class=args.per_class, device=device,
                         batch_size=args.batch_size, progress=progress)
    f = audit.find(e, conflict_threshold=args.conflict_threshold, outlier_threshold=args.outlier_threshold,
                   far=args.far, stranger_rate=args.stranger_rate, device=device, progress=progress)
    warnings += f.warnings
    groups = [audit.identical_bytes(smp) for smp in samples]
    report = audit_report.build(checkpoint=model_input.described(loaded), sets=sets, e=e, f=f, byte_groups=groups,
                                per_class=args.per_class, device=str(device), warnings=warnings)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    rep.write_json(args.output / "audit.json", report)
    audit_report.write_csvs(args.output, report)
    for rel, text in audit_report.decision_files(report).items():
        write_atomic(args.output / rel, text)
    audit_report.write_html(args.output, report, samples, e)

    print(f"conflict threshold {f.conflict_threshold['how']}")
    print(f"outlier threshold {f.outlier_threshold['how']}")
    print(f"{e.emb.shape[0]} images of {e.num_classes} classes: {len(report['conflicts'])} conflicts "
          f"({len(report['conflict_groups'])} groups), {len(report['outliers'])} outliers, "
          f"{len(report['duplicates'])} duplicates ({f.rounds} rounds)")
    for w in warnings:
        print(f"warning: {w}")
    print(f"wrote {args.output / 'audit.json'}, the CSVs, {args.output / 'decisions'}/ and "
          f"{args.output / 'index.html'}")
    return 0
