"""`python -m evaluate overlap`: the train/test identity overlap audit's command.

    python -m evaluate overlap --checkpoint MODEL --shards DIR [--val-data DIR] [--people PATH ...]
        [--skip-bad] [--threshold T | --far F] [--per-class K] --output REPORT.json [--write-exclusions FILE]
        [--targets lfw ...] (+ the model and run options of every evaluate command)

The test sets are the verification pair sets under --val-data (identities known only through their
same-identity pairs) and the sets of people given with --people (identity folders, a .rec or shards:
identities known by their labels); at least one of them. What it decides and how: evaluate/overlap.py;
what it writes: evaluate/overlap_report.py. Everything that can be wrong with the inputs and outputs
fails before the image passes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from common.errors import InputError
import pipeline
from convert.manifest import Manifest
from evaluate import cli_args, image_sources, impostor_threshold, model_input, output_check, overlap, overlap_report
from evaluate import report as rep
from evaluate import verification
from evaluate.embed_images import embed_source
from evaluate.targets import DataRoots, MissingDataError, UnknownTargetError, kind, plan

OVERLAP_PROG = "python -m evaluate overlap"


class SetNameError(InputError, ValueError):
    """Two test sets of one audit under the same name (the report's key for each)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=OVERLAP_PROG, description="Flag training classes whose identity is in the "
                                "test sets: each class's centre against every set image, decided per test "
                                "identity (evaluate/overlap.py explains the default threshold).")
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint file, run directory, backbone .pth, or "
                   "an exported model.onnx or its folder (run in onnxruntime)")
    p.add_argument("--shards", required=True, type=Path, help="the training shards (python -m convert)")
    p.add_argument("--val-data", type=Path, help="folder of .bin files or CVLFace arrow folders: pair sets")
    p.add_argument("--people", type=Path, nargs="+", default=[], metavar="PATH",
                   help="test sets whose identities are known: a folder of identity folders (one per person, "
                        "aligned 112x112 faces), an MXNet .rec or shards; each named by its folder (a .rec file "
                        "by its stem)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out the --people images that do not decode, each named in the report (default: "
                        "such an image stops the audit, named)")
    p.add_argument("--targets", nargs="+", metavar="SET",
                   help="pair sets under --val-data to audit (default: every one there)")
    given = p.add_mutually_exclusive_group()  # a given threshold has no rate to choose
    given.add_argument("--threshold", type=cli_args.finite_float, default=None,
                       help="cosine similarity above which an image matches a class centre (default: the impostor "
                            "rule, evaluate/overlap.py, from pairs of training images of different classes)")
    given.add_argument("--far", type=cli_args.far, default=impostor_threshold.TARGET_FAR,
                       help=f"the impostor rule's false-accept rate (default {impostor_threshold.TARGET_FAR:g})")
    p.add_argument("--per-class", type=cli_args.positive_int, default=overlap.DEFAULT_PER_CLASS, metavar="K",
                   help=f"images averaged into each class centre, its first K by key (default "
                        f"{overlap.DEFAULT_PER_CLASS})")
    p.add_argument("--output", required=True, type=Path, help="report JSON; the CSV goes beside it (.csv)")
    p.add_argument("--write-exclusions", type=Path, metavar="FILE",
                   help="write the flagged classes for `python -m convert rec|folder --exclude-classes FILE`")
    cli_args.model_and_run(p)
    return p


def _verification_sets(targets: Optional[Sequence[str]], roots: DataRoots) -> dict:
    """{name: path} of the pair sets to audit: those named, or every one under --val-data."""
    if targets:
        others = [t for t in targets if kind(t) != "verification"]
        if others:
            raise UnknownTargetError(f"--targets {' '.join(others)}: the overlap audit reads the verification pair "
                                     f"sets under --val-data only")
        run, _ = plan(targets, roots, explicit=True)
    else:
        run, _ = plan(verification.STANDARD_SETS, roots, explicit=False)
    if not run:
        raise MissingDataError(f"{roots.val_data}: no verification set here (NAME.bin, or a CVLFace arrow folder "
                               f"NAME/) to audit the training classes against")
    return run


def _people_sources(paths: Sequence[Path], taken: Sequence[str]) -> dict:
    """{name: ImageSource} of the --people sets, each with its identities, named by its folder (a .rec
    file by its stem); a name another set has is refused."""
    sources, names = {}, set(taken)
    for path in paths:
        source = image_sources.open_source(path)
        if source.labels is None:
            raise image_sources.ImageSourceError(f"{path}: a {source.kind} says nobody's identity; --people takes "
                                                 f"a folder of identity folders, a .rec or shards (pair sets go "
                                                 f"under --val-data)")
        name = path.stem if path.is_file() else path.resolve().name
        if name in names:
            raise SetNameError(f"{path}: a second test set named {name!r}; give each set a folder of its own name")
        names.add(name)
        sources[name] = source
    return sources


def _check_inputs(args: argparse.Namespace) -> tuple[dict, dict]:
    """The pair sets' paths and the people's sources, every output checked writable: the failures that need
    no image pass, before one."""
    if args.val_data is None and args.targets:
        raise UnknownTargetError(f"--targets {' '.join(args.targets)}: names pair sets under --val-data, "
                                 f"which is not given")
    if args.val_data is None and not args.people:
        raise MissingDataError("no test set: give --val-data DIR (pair sets), --people PATH ... or both")
    paths = {} if args.val_data is None else _verification_sets(args.targets, DataRoots(val_data=args.val_data))
    people = _people_sources(args.people, list(paths))
    output_check.check_report_with_csv(args.output)
    if args.write_exclusions is not None:
        output_check.check_output(args.write_exclusions, "the exclusion list", "exclusions.txt")
    return paths, people


def _embedded_sets(net, paths: dict, people: dict, args: argparse.Namespace, device) -> list:
    """Every test set as an overlap.AuditedSet: its images through the evaluator's image pass."""
    progress = not args.quiet
    sets = []
    for path in paths.values():
        vset = verification.load_set(path)
        sets.append(overlap.pair_set(vset, overlap.set_embeddings(net, vset, device=device,
                                                                  batch_size=args.batch_size, progress=progress)))
    for name, source in people.items():
        embedded = embed_source(net, source, device=device, batch_size=args.batch_size, progress=progress,
                                skip_bad=args.skip_bad)
        skipped = tuple((source.keys[i], reason) for i, reason in embedded.skipped)
        sets.append(overlap.people_set(name, source, overlap.unit(embedded.fused), embedded.kept, skipped))
    return sets


def _print_summary(report: dict, audits: Sequence, warnings: Sequence[str], written: Sequence) -> None:
    print(f"threshold {report['threshold']:.4f} ({report['how_the_threshold_was_chosen']})")
    for a in audits:
        row = report["sets"][a.name]
        chance = row["expected_by_chance"]
        print(f"{a.name}: {row['identities']} identities in {a.images} images, {row['identities_flagged']} taken for "
              f"a training class ({row['single_image_identities_flagged']} on a single image), "
              f"{row['classes_flagged']} classes flagged"
              + ("" if chance is None else f" (strangers would give about {chance:.2g} by chance)")
              + (f"; {len(row['skipped'])} image(s) left out, they do not decode (the report's skipped)"
                 if row["skipped"] else ""))
    for w in warnings:
        print(f"warning: {w}")
    print(f"{report['classes_flagged']} of {report['num_classes']} training classes flagged; wrote "
          + ", ".join(str(p) for p in written))


def main_overlap(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    paths, people = _check_inputs(args)
    csv_path = args.output.with_suffix(".csv")
    samples = pipeline.ShardSamples(args.shards)
    manifest = Manifest.load(args.shards)
    device = pipeline.resolve_device(args.device)
    loaded = model_input.load(args.checkpoint, args, device)

    centres = overlap.class_centres(loaded.net, samples, per_class=args.per_class, device=device,
                                    batch_size=args.batch_size, progress=not args.quiet)
    sets = _embedded_sets(loaded.net, paths, people, args, device)
    chosen, audits = overlap.audit(centres, sets, args.threshold, device=device, far=args.far)
    warnings = overlap.warnings_for(chosen, audits)
    report = overlap_report.build(
        checkpoint=model_input.described(loaded), shards=args.shards, manifest=manifest, val_data=args.val_data,
        people=args.people, per_class=args.per_class, centres=centres, chosen=chosen, audits=audits,
        warnings=warnings, device=str(device), csv_path=csv_path, exclusions=args.write_exclusions)
    rep.write_json(args.output, report)
    overlap_report.write_csv(csv_path, report)
    written = [args.output, csv_path]
    if args.write_exclusions is not None:
        overlap_report.write_exclusions(args.write_exclusions, report, manifest)
        written.append(args.write_exclusions)
    _print_summary(report, audits, warnings, written)
    return 0
