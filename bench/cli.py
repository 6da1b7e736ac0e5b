"""`python -m bench`: parse the command line, prepare the data, run the stages, print and write the reports."""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional, Sequence

from bench.settings import BenchError, Settings
from common.errors import run_command

PROG = "python -m bench"

# (full run, --quick): --quick must finish in under two minutes on 2 cores, data generation included.
DEFAULTS = {
    "images": (6000, 250),
    "repeats": (4, 2),
    "warmup": (1, 1),
    "batch_size": (256, 64),
}
STEP_DEFAULTS = {  # per device: (batch, timed steps per round) for (full, --quick)
    "cpu": {"step_batch_size": (64, 8), "step_steps": (5, 2)},
    # The paper's global batch (4 GPUs x 128) on one GPU; 10 timed steps + 1 untimed fit the default 6000 images.
    "cuda": {"step_batch_size": (512, 32), "step_steps": (10, 3)},
}
MODELS = {"cpu": ("mobilefacenet_s", "iresnet_s"), "cuda": ("mobilefacenet", "iresnet50")}


def _parser(stages: Sequence[str]) -> argparse.ArgumentParser:
    from bench.stages.registry import ON_REQUEST

    default = [s for s in stages if s not in ON_REQUEST]
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Throughput of every stage of the data path and of the distillation step, each against its "
                    "baseline, measured interleaved in one run.")
    p.add_argument("--data", type=Path, help="a .rec folder (train.rec/train.idx), a .rec file, or a JPEG shards "
                                             "directory; default: a cached synthetic set of --images images")
    p.add_argument("--images", type=int, help=f"synthetic set size (default {DEFAULTS['images'][0]}, "
                                              f"--quick {DEFAULTS['images'][1]})")
    p.add_argument("--cache-dir", type=Path, help="where data is generated and converted once (default "
                                                  "$XDG_CACHE_HOME or ~/.cache, then adadistill/bench)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda where torch finds one, else cpu")
    p.add_argument("--stages", default=",".join(default),
                   help=f"comma-separated, of {','.join(stages)} (default: {','.join(default)}; growth takes minutes "
                        f"and writes its own data of each --growth-records size)")
    p.add_argument("--quick", action="store_true", help="small sizes and few rounds (a smoke run)")
    p.add_argument("--repeats", type=int, help="timed rounds per contender (default 4, --quick 2)")
    p.add_argument("--warmup", type=int, help="untimed rounds per contender first (default 1)")
    p.add_argument("--batch-size", type=int, help="loader batch (default 256, --quick 64)")
    p.add_argument("--step-batch-size", type=int,
                   help="step stage batch (default: cpu 64, cuda 512; --quick cpu 8, cuda 32)")
    p.add_argument("--step-steps", type=int, help="timed steps per round in the step stage (default: cpu 5, cuda 10)")
    p.add_argument("--num-classes", type=int, help="step stage: classes of the margin head (default: the data's); "
                                                   "the head's cost at 85742 (MS1MV2) or 2059906 (WebFace42M)")
    p.add_argument("--student", help="step stage student backbone (default: cpu mobilefacenet_s, cuda mobilefacenet)")
    p.add_argument("--teacher", help="step stage teacher backbone (default: cpu iresnet_s, cuda iresnet50)")
    p.add_argument("--workers", type=int, help="baseline DataLoader workers (default: one per usable core)")
    p.add_argument("--growth-records", default="100000,1000000",
                   help="growth stage: comma-separated, increasing record counts (default 100000,1000000)")
    p.add_argument("--growth-classes", type=int, default=85742,
                   help="growth stage: classes of each .rec (default 85742, MS1MV2's; at most its records)")
    p.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    p.add_argument("--markdown", type=Path, metavar="OUT", help="write the results as Markdown")
    p.add_argument("--plot", type=Path, metavar="OUT.png", help="draw img/s bars per pair (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    return p


def _pick(value, defaults: tuple, quick: bool):
    return value if value is not None else defaults[1 if quick else 0]


def _device(asked: Optional[str]) -> str:
    import torch

    if asked is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if asked == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"--device cuda: torch finds no CUDA device here (torch {torch.__version__}, CUDA build "
                         f"{torch.version.cuda}); use --device cpu")
    return asked


def _stages(text: str, known: Sequence[str]) -> list:
    asked = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in asked if s not in known]
    if unknown or not asked:
        raise BenchError(f"--stages: unknown stage(s) {unknown or text!r}; known: {','.join(known)}")
    return [s for s in known if s in asked]  # always in data-flow order


def _models(args, device: str) -> tuple:
    import models

    student = args.student or MODELS[device][0]
    teacher = args.teacher or MODELS[device][1]
    for flag, name in (("--student", student), ("--teacher", teacher)):
        if name not in models.names():
            raise BenchError(f"{flag} {name!r}: not a registered backbone; known: {', '.join(models.names())}")
    return student, teacher


def _sizes(text: str) -> tuple:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise BenchError(f"--growth-records: expected comma-separated whole numbers, found {text!r}") from None


def _settings(args, device: str, scratch: Path) -> Settings:
    from pipeline import cpu_threads

    q = args.quick
    student, teacher = _models(args, device)
    steps = STEP_DEFAULTS[device]
    return Settings(
        device=device, repeats=_pick(args.repeats, DEFAULTS["repeats"], q),
        warmup=_pick(args.warmup, DEFAULTS["warmup"], q), batch_size=_pick(args.batch_size, DEFAULTS["batch_size"], q),
        step_batch_size=_pick(args.step_batch_size, steps["step_batch_size"], q),
        step_steps=_pick(args.step_steps, steps["step_steps"], q), student=student, teacher=teacher,
        workers=args.workers or cpu_threads(), scratch=scratch, quick=q, progress=not args.no_progress,
        step_num_classes=args.num_classes, growth_records=_sizes(args.growth_records),
        growth_classes=args.growth_classes)


def _known_errors() -> tuple:
    """The project's own errors about data and devices: reported as one line, not a traceback (besides
    common.errors.InputError, which every one of them may derive from)."""
    from convert import ManifestError, OutputError
    from convert.recordio import RecordIOError
    from convert.sources import SourceError
    from pipeline import BatchSizeError, PipelineDeviceError, ShardError

    return (BenchError, ManifestError, OutputError, RecordIOError, SourceError, BatchSizeError, PipelineDeviceError,
            ShardError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from bench.stages import STAGES, stage_names

    known = stage_names()
    args = _parser(known).parse_args(argv)
    return run_command(PROG, lambda: _run(args, known, STAGES), known=_known_errors())


def _run(args, known: Sequence[str], stages: dict) -> int:
    from bench import data as bench_data, environment, report
    from bench.harness import Skipped
    from bench.stages import needs_shared_data
    from bench.stages.growth import Growth

    started = time.perf_counter()
    chosen = _stages(args.stages, known)
    if args.plot is not None and report.check_plot_available():
        raise BenchError(report.check_plot_available())
    if args.images is not None and args.data is not None:
        raise BenchError("--images sizes the synthetic set; it cannot go with --data")
    device = _device(args.device)
    cache_dir = args.cache_dir or bench_data.default_cache_dir()
    settings = _settings(args, device, cache_dir)  # every setting checked before any data is made
    env = environment.collect(device)
    data = None  # the growth stage alone writes its own data
    if needs_shared_data(chosen):
        data = bench_data.prepare(args.data, _pick(args.images, DEFAULTS["images"], args.quick), cache_dir,
                                  progress=settings.progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # The convert stage's outputs go to a fresh folder beside the cached data (same file system).
    settings = replace(settings, scratch=Path(tempfile.mkdtemp(prefix="scratch-", dir=cache_dir)))
    try:
        results, skipped, growth = [], [], []
        for name in chosen:
            if settings.progress:
                print(f"bench: stage {name}", file=sys.stderr)
            for item in stages[name](settings, data):  # measured pairs, and contenders left out here
                (skipped if isinstance(item, Skipped) else growth if isinstance(item, Growth) else results).append(item)
    finally:
        shutil.rmtree(settings.scratch, ignore_errors=True)
    env["load_average_at_end"] = environment.load_average()
    shown = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items() if k != "scratch"}
    doc = report.document(env, data.describe() if data is not None else None, dict(shown, stages=chosen), results,
                          time.perf_counter() - started, skipped=skipped, growth=growth[0] if growth else None)
    print(report.table(doc))
    if args.json is not None:
        report.write_json(args.json, doc)
    if args.markdown is not None:
        report.write_markdown(args.markdown, doc)
    if args.plot is not None:
        report.plot(args.plot, doc)
    return 0
