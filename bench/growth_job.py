"""One measured job of the growth stage in a fresh process, with its time and its memory.

`run(kind, args)` starts `python -m bench.growth_job KIND ARGS` and watches the process and the workers it
starts: every 20 ms it sums their resident anonymous memory (/proc/PID/status RssAnon: the heap, the
arrays, the tables; not the pages of the mapped .rec and tars, which are page cache the kernel may drop).
The job times its own work after its imports and reports its own peak resident set (VmHWM, which counts
the mapped file pages it touched; not ru_maxrss, which Linux carries over from the process that started
it, here the benchmark with torch loaded); its largest worker's is the largest VmHWM the watch saw.

Jobs:
- `convert REC OUT --workers W`: convert.convert_rec, from the call to the manifest written.
- `loader SHARDS --batch-size B --device D`: pipeline.build_loader and its first batch (time to first batch:
  the manifest and `.idx` files parsed, the labels table checked, the epoch's order drawn, the graph built),
  DALI imported before the clock starts; `split` gives the index's part (pipeline.loader.open_index, timed
  alone just before, its tables dropped before build_loader parses the index again).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from bench.settings import BenchError

SAMPLE_EVERY_S = 0.02
_REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class JobResult:
    """seconds: the job's work alone (no interpreter start, no imports). peak_anon_mib: the largest sum of
    RssAnon over the job and its workers seen while it ran. peak_rss_mib: the job process's VmHWM (mapped
    file pages included); worker_peak_rss_mib: the largest VmHWM of a worker seen (0 without workers)."""

    seconds: float
    samples: int
    split: float  # loader: the seconds of `seconds` spent parsing the index; convert: 0
    peak_anon_mib: float
    peak_rss_mib: float
    worker_peak_rss_mib: float


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):  # it ended between the listing and the read
        pass
    return 0


def _tree(pid: int) -> list:
    """`pid` and its descendants, from /proc/PID/task/TID/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def run(kind: str, args: Sequence[str]) -> JobResult:
    """Run one job in a fresh process (niced as this one is) and return what it measured."""
    if not os.path.isdir("/proc/self/task"):
        raise BenchError("the growth stage reads /proc to watch a job's memory; this system has no /proc")
    cmd = [sys.executable, "-m", "bench.growth_job", kind, *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=_REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_kib, worker_kib = 0, 0
    while proc.poll() is None:
        tree = _tree(proc.pid)
        peak_kib = max(peak_kib, sum(_status_kib(p, "RssAnon") for p in tree))
        worker_kib = max([worker_kib] + [_status_kib(p, "VmHWM") for p in tree[1:]])
        time.sleep(SAMPLE_EVERY_S)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise BenchError(f"growth job {' '.join(cmd[1:])} failed (exit {proc.returncode}): "
                         f"{err.strip().splitlines()[-1] if err.strip() else 'no message'}")
    found = json.loads(out.strip().splitlines()[-1])
    return JobResult(seconds=found["seconds"], samples=found["samples"], split=found["split"],
                     peak_anon_mib=peak_kib / 1024,
                     peak_rss_mib=found["hwm_kib"] / 1024, worker_peak_rss_mib=worker_kib / 1024)


def _convert(args) -> tuple:
    from convert import convert_rec

    start = time.perf_counter()
    manifest = convert_rec(args.path, args.out, workers=args.workers, progress=False)
    return time.perf_counter() - start, 0.0, manifest.num_samples


def _loader(args) -> tuple:
    import pipeline
    from pipeline.loader import open_index

    start = time.perf_counter()
    open_index(args.path)
    indexed = time.perf_counter()
    loader = pipeline.build_loader(args.path, args.batch_size, device=args.device, seed=0)
    batch = next(iter(loader))
    seconds = time.perf_counter() - indexed
    return seconds, indexed - start, int(batch.images.shape[0])


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.growth_job", description="one measured job of the growth stage")
    p.add_argument("kind", choices=("convert", "loader"))
    p.add_argument("path", help="convert: the .rec; loader: the shards directory")
    p.add_argument("--out", help="convert: the output directory")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.kind == "loader":
        import pipeline  # noqa: F401  (torch and DALI imported before the clock starts)
        try:
            import nvidia.dali  # noqa: F401  (the loader's backend, imported by build_loader where present)
        except ImportError:
            pass
    else:
        import convert  # noqa: F401
    seconds, split, samples = (_convert if args.kind == "convert" else _loader)(args)
    print(json.dumps({"seconds": seconds, "split": split, "samples": samples,
                      "hwm_kib": _status_kib(os.getpid(), "VmHWM")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
