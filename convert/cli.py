"""Command line of the convert package: synth, synth-bin, rec, folder, verify.

A bad input or a refused action (an output folder another job holds, files that would be overwritten
without --overwrite) ends the command with one line, `python -m convert: error: <file>: <what>`, and exit
status 2 (common.errors.run_command). `verify` finding problems lists them and exits 1: a report, not an
error.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

from common.errors import run_command
from convert.image_check import DEFAULT_MAX_PIXELS

PROG = "python -m convert"


def _synth(args: argparse.Namespace) -> int:
    from convert.synthetic import write_synthetic

    write_synthetic(
        args.out, args.identities, args.per_identity, seed=args.seed, fmt=args.format,
        first_identity=args.first_identity, workers=args.workers, overwrite=args.overwrite,
        first_image=args.first_image,
    )
    print(f"wrote {args.identities} identities x {args.per_identity} images ({args.format}) to {args.out}")
    return 0


def _synth_bin(args: argparse.Namespace) -> int:
    from convert.synthetic import write_pairs_bin

    write_pairs_bin(
        args.out, args.identities, args.per_identity, args.pairs, seed=args.seed,
        first_identity=args.first_identity, workers=args.workers,
    )
    print(f"wrote {args.pairs} pairs of identities {args.first_identity}..{args.first_identity + args.identities - 1} to {args.out}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    import convert

    fn = convert.convert_rec if args.command == "rec" else convert.convert_folder
    start = time.perf_counter()
    m = fn(
        args.src, args.out, samples_per_shard=args.samples_per_shard, seed=args.seed, workers=args.workers,
        encoding=args.encoding, image_size=args.image_size, resize=args.resize, skip_corrupt=args.skip_corrupt,
        overwrite=args.overwrite, progress=not args.quiet, max_pixels=args.max_pixels,
        exclude_classes=args.exclude_classes, exclude_keys=args.exclude_keys, merge_classes=args.merge_classes,
    )
    seconds = time.perf_counter() - start
    total = sum(s.bytes for s in m.shards)
    skipped = f", {len(m.skipped)} corrupt skipped" if m.skipped else ""
    if m.exclusion is not None:
        skipped += (f", {m.exclusion.num_classes} classes ({m.exclusion.num_samples} samples) excluded by "
                    f"{m.exclusion.file}")
    if m.key_exclusion is not None:
        skipped += f", {m.key_exclusion.num_samples} images excluded by {m.key_exclusion.file}"
    if m.merge is not None:
        skipped += (f", {len(m.merge.merged)} classes merged ({m.merge.num_samples} images relabelled; the "
                    f"manifest's merge and class_map say how labels were renumbered) by {m.merge.file}")
    print(f"{m.num_samples} samples, {m.num_classes} classes, {len(m.shards)} shards, {total} bytes, "
          f"{seconds:.1f} s ({m.num_samples / max(seconds, 1e-9):.0f} img/s){skipped} -> {args.out}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    import convert

    problems = convert.verify(args.out)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"verify: {len(problems)} problems in {args.out}", file=sys.stderr)
        return 1
    m = convert.Manifest.load(args.out)
    print(f"verify: ok, {m.num_samples} samples in {len(m.shards)} shards, {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write the synthetic identity dataset (.rec or folders)")
    p.add_argument("out")
    p.add_argument("--identities", type=int, required=True)
    p.add_argument("--per-identity", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("rec", "folder"), default="rec")
    p.add_argument("--first-identity", type=int, default=0)
    p.add_argument("--first-image", type=int, default=0,
                   help="each identity's first image number: a training set's --per-identity gives new photos "
                        "of its people")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the train.rec/train.idx/property (or identity folders) already in OUT")
    p.set_defaults(func=_synth)

    p = sub.add_parser("synth-bin", help="write a synthetic verification pair set (insightface .bin)")
    p.add_argument("out")
    p.add_argument("--identities", type=int, required=True)
    p.add_argument("--pairs", type=int, required=True)
    p.add_argument("--per-identity", type=int, default=10, help="images drawn from per identity")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--first-identity", type=int, default=0)
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=_synth_bin)

    for name, what in (("rec", "a .rec (folder with train.rec/train.idx, or the .rec)"),
                       ("folder", "a folder with one sub-folder of images per identity")):
        p = sub.add_parser(name, help=f"convert {what} into shards")
        p.add_argument("src")
        p.add_argument("out")
        p.add_argument("--samples-per-shard", type=int, default=None, help="default: shards of about 384 MB")
        p.add_argument("--seed", type=int, default=0, help="seed of the global shuffle")
        p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
        p.add_argument("--encoding", choices=("jpeg", "raw"), default="jpeg",
                       help="jpeg: source bytes unchanged; raw: decoded uint8 HWC pixels")
        p.add_argument("--image-size", type=int, default=112)
        p.add_argument("--resize", action="store_true", help="resize images that are not image-size square")
        p.add_argument("--skip-corrupt", action="store_true", help="leave out images that do not decode")
        p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                       help="refuse source images of more than N pixels, read from the image header before "
                            f"decoding (default {DEFAULT_MAX_PIXELS}, Pillow's own limit: about 256 MiB of "
                            "RGB pixels; Pillow still refuses non-JPEG images above twice that)")
        p.add_argument("--exclude-classes", metavar="FILE", default=None,
                       help="leave out the source classes listed in FILE, one a line (a .rec's label or an "
                            "identity folder's name; '#' starts a comment line), e.g. the list `python -m "
                            "evaluate overlap --write-exclusions` writes; the rest are renumbered 0..C-1")
        p.add_argument("--exclude-keys", metavar="FILE", default=None,
                       help="leave out the source images listed in FILE, one a line (a .rec's record key or an "
                            "image's path under SRC), e.g. the exclude-keys.txt `python -m evaluate audit` writes")
        p.add_argument("--merge-classes", metavar="FILE", default=None,
                       help="relabel source classes as others, one 'FROM -> TO' a line, e.g. the "
                            "merge-classes.txt `python -m evaluate audit` writes; the rest renumbered 0..C-1")
        p.add_argument("--overwrite", action="store_true",
                       help="replace another dataset's shards in OUT, or shard files no conversion of SRC wrote")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=_convert)

    p = sub.add_parser("verify", help="re-read every shard and check it against the manifest")
    p.add_argument("out")
    p.set_defaults(func=_verify)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # OSError as well: a folder that cannot be created or read (no permission, no such path) is bad input too,
    # and its message names the path.
    return run_command(PROG, lambda: args.func(args), known=(OSError,))
