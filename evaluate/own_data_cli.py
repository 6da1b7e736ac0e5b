"""`python -m evaluate embed | pairs | threshold`: a user's own images, from embeddings to a deployable threshold.

    python -m evaluate embed --checkpoint MODEL --images SRC --output emb.parquet [--no-flip] [--skip-bad]
        [--landmarks FILE] [--config CFG | --network NAME] [--device auto] [--batch-size N]
    python -m evaluate pairs FOLDER --output mine.bin --pairs N [--seed S] [--landmarks FILE]
    python -m evaluate threshold --checkpoint MODEL [MODEL ...] --data SET [--far F ...] [--roc roc.png]
        [--output REPORT.json] [--names A B ...] [--config CFG | --network NAME] [--device auto] [--batch-size N]

MODEL is whatever `python -m evaluate --checkpoint` takes, loaded by the same function (evaluate.model_input.load).
`embed` writes one Parquet row per image of SRC (evaluate.embed_images; SRC as evaluate.image_sources
reads it); `pairs` draws a .bin from identity folders whose 10 folds share no identity (evaluate.pairs);
`threshold` reports each model's cosine threshold and TAR at each FAR on a pair set
(evaluate.thresholds), as JSON and CSV with --output, and draws the ROC with --roc.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

import pipeline
from evaluate import (cli_args, embed_images, image_sources, landmarks, model_input, pairs, roc_plot, thresholds,
                      verification)
from evaluate import report as rep
from evaluate.output_check import check_output, check_report_with_csv

EMBED_PROG = "python -m evaluate embed"
PAIRS_PROG = "python -m evaluate pairs"
THRESHOLD_PROG = "python -m evaluate threshold"


def _parser_embed() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=EMBED_PROG, description="Embed every image of a folder, .rec, shards folder or "
                                ".bin into a Parquet file, as the evaluation embeds them.")
    p.add_argument("--checkpoint", required=True, type=Path, help="anything `python -m evaluate --checkpoint` takes")
    p.add_argument("--images", required=True, type=Path,
                   help="a folder of identity folders, a flat folder of images, a .rec, a shards folder or a .bin")
    p.add_argument("--output", required=True, type=Path, help="the Parquet file to write")
    p.add_argument("--no-flip", action="store_true", help="e(x) alone instead of e(x) + e(flip(x))")
    p.add_argument("--skip-bad", action="store_true",
                   help=f"leave out images that do not decode, listed in {embed_images.SKIPPED_NAME} beside the output")
    p.add_argument("--landmarks", type=Path, help="CSV: image, then five x,y points; align each image to 112x112")
    cli_args.model_and_run(p)
    return p


def _points(file: Optional[Path], source: image_sources.ImageSource) -> Optional[np.ndarray]:
    """--landmarks' float32 [N, 5, 2] in the source's order (evaluate.landmarks), or None without it."""
    if file is None:
        return None
    return landmarks.match(landmarks.read_landmarks(file), source.keys, source.path, file)


def main_embed(argv: Sequence[str]) -> int:
    args = _parser_embed().parse_args(argv)
    source = image_sources.open_source(args.images)
    points = _points(args.landmarks, source)
    check_output(args.output, "the embeddings", "embeddings.parquet")
    device = pipeline.resolve_device(args.device)
    loaded = model_input.load(args.checkpoint, args, device)
    t0 = time.perf_counter()
    done = embed_images.embed_source(loaded.net, source, device=device, batch_size=args.batch_size,
                                     flip=not args.no_flip, skip_bad=args.skip_bad, landmarks=points,
                                     progress=not args.quiet)
    seconds = time.perf_counter() - t0
    meta = {**model_input.described(loaded), "source": source.path, "source_kind": source.kind,
            "embedding": "e(x)" if args.no_flip else "e(x) + e(flip(x))", "normalised": False,
            "landmarks": str(args.landmarks) if args.landmarks else None, "skipped": len(done.skipped)}
    embed_images.write_parquet(args.output, embed_images.table(source, done, rep.jsonable(meta)))
    print(f"embedded {len(done.kept)} of {len(source)} images of {source.path} ({source.kind}) with {loaded.name} "
          f"in {seconds:.1f} s ({len(done.kept) / max(seconds, 1e-9):.0f} img/s); {done.fused.shape[1]}-d "
          f"{meta['embedding']}")
    if args.skip_bad:
        skipped = args.output.parent / embed_images.SKIPPED_NAME
        embed_images.write_skipped(skipped, source, done.skipped)
        print(f"skipped {len(done.skipped)} image(s) that do not decode: listed in {skipped}")
    print(f"wrote {args.output}")
    return 0


def _parser_pairs() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PAIRS_PROG, description="Draw a verification pair set (insightface .bin) from "
                                "identity folders, half genuine, half impostor, its 10 folds disjoint in identities.")
    p.add_argument("folder", type=Path, help="a folder of identity folders (or a .rec, or JPEG shards)")
    p.add_argument("--output", required=True, type=Path, help="the .bin to write; its pair listing goes beside (.csv)")
    p.add_argument("--pairs", required=True, type=cli_args.positive_int, help="number of pairs (at least 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--landmarks", type=Path, help="CSV: image, then five x,y points; store 112x112 aligned crops")
    return p


def main_pairs(argv: Sequence[str]) -> int:
    args = _parser_pairs().parse_args(argv)
    if args.output.suffix != ".bin":
        raise pairs.PairSetError(f"{args.output}: name the pair set NAME.bin (the evaluation reads .bin files)")
    source = image_sources.open_source(args.folder)
    if source.labels is None:
        raise pairs.PairSetError(f"{source.path}: a {source.kind} says nothing of identities; give a folder of "
                                 f"identity folders")
    points = _points(args.landmarks, source)
    if points is None:  # stored as they are: every image must be one the evaluation reads, checked before drawing
        pairs.check_formats(source)
    check_output(args.output, "the pair set", "pairs.bin")
    drawn = pairs.draw(source.labels, args.pairs, args.seed, where=source.path)
    stored = pairs.stored_images(source, sorted({i for p in drawn for i in (p.first, p.second)}), points)
    listing = pairs.write(args.output, source, drawn, stored)
    same = sum(p.same for p in drawn)
    print(f"{len(drawn)} pairs ({same} genuine, {len(drawn) - same} impostor) of {len(stored)} images of "
          f"{len(set(source.labels.tolist()))} identities, {pairs.NFOLDS} folds disjoint in identities; wrote "
          f"{args.output} and {listing}")
    return 0


def _parser_threshold() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=THRESHOLD_PROG, description="The cosine threshold and TAR at each FAR on a pair "
                                "set, for one or several models (evaluate/thresholds.py says how).")
    p.add_argument("--checkpoint", required=True, nargs="+", type=Path,
                   help="one or several models, each anything `python -m evaluate --checkpoint` takes")
    p.add_argument("--names", nargs="+", help="the models' names in the report and the plot (default: file names)")
    p.add_argument("--data", required=True, type=Path, help="a pair set: a .bin or a CVLFace arrow folder")
    p.add_argument("--far", type=cli_args.far, action="append",
                   help="a false-accept rate; repeat for several (default: 1e-1, 1e-2, ... down to what the set's "
                        "impostor pairs support)")
    p.add_argument("--roc", type=Path, help="draw the ROC of every model into this PNG")
    p.add_argument("--output", type=Path, help="report JSON; a CSV (one row per model and FAR) goes beside it")
    cli_args.model_and_run(p)
    return p


def _print_points(name: str, result: dict) -> None:
    print(f"{name}: accuracy {100 * result['acc']:.2f} +- {100 * result['std']:.2f} % "
          f"({result['pairs']} pairs, {result['thresholds']['impostor_pairs']} impostor)")
    for far, p in result["thresholds"]["far"].items():
        print(f"  FAR {far:g}: " + (p if isinstance(p, str) else
                                     f"threshold {p['threshold']:.4f} (cosine), TAR {100 * p['tar']:.2f} % "
                                     f"(FAR reached {p['far']:.2g})"))


def main_threshold(argv: Sequence[str]) -> int:
    parser = _parser_threshold()
    args = parser.parse_args(argv)
    if args.names is not None and len(args.names) != len(args.checkpoint):
        parser.error(f"--names: {len(args.names)} names for {len(args.checkpoint)} checkpoints")
    vset = verification.load_set(args.data)
    problem = verification.fold_problem(vset.issame)
    if problem is not None:
        raise verification.DataFileError(f"{args.data}: {problem}")
    if args.output is not None:
        check_report_with_csv(args.output, "thresholds.json")
    if args.roc is not None:
        check_output(args.roc, "the ROC", "roc.png")
    device = pipeline.resolve_device(args.device)
    models, curves = [], []
    for n, ckpt in enumerate(args.checkpoint):
        loaded = model_input.load(ckpt, args, device)
        name = args.names[n] if args.names else ckpt.name
        fused, xnorm = verification.normalised_embeddings(loaded.net, vset, device=device, batch_size=args.batch_size,
                                                          progress=not args.quiet)
        result = verification.metrics(fused, xnorm, vset.issame, fars=args.far)
        models.append({"name": name, **model_input.described(loaded), "results": {vset.name: result}})
        _print_points(name, result)
        far, tar = thresholds.roc(thresholds.scores(fused), vset.issame)
        curves.append(roc_plot.Curve(name, far, tar, {f: p for f, p in result["thresholds"]["far"].items()
                                                      if not isinstance(p, str)}))
    if args.roc is not None:
        roc_plot.draw(curves, vset.name, int((~vset.issame).sum()), args.roc)
        print(f"wrote {args.roc}")
    if args.output is not None:
        report = {"set": str(args.data), "score": thresholds.SCORE, "device": str(device), "models": models}
        rep.write_json(args.output, report)
        rows = [{"name": m["name"], "checkpoint": m["checkpoint"], "far": f"{far:g}"}
                | ({"note": p} if isinstance(p, str) else
                   {"threshold": p["threshold"], "tar": p["tar"], "far_reached": p["far"]})
                for m in models for far, p in m["results"][vset.name]["thresholds"]["far"].items()]
        csv_path = args.output.with_suffix(".csv")
        rep.write_csv(csv_path, rows)
        print(f"wrote {args.output} and {csv_path}")
    return 0


COMMANDS = {"embed": (EMBED_PROG, main_embed), "pairs": (PAIRS_PROG, main_pairs),
            "threshold": (THRESHOLD_PROG, main_threshold)}
