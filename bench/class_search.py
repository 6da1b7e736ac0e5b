"""The audit's class-by-class similarity search (evaluate.similarity_search.close_pairs) at MS1M's size:
random unit vectors, C classes of D dimensions, through the real search function; prints the time and
the extrapolation to 2M classes (the search is O(C^2 D): the tiles of the upper triangle).

    python -m bench.class_search [--classes 85742] [--dim 512] [--block 4096] [--device cpu]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench import environment
from evaluate.similarity_search import close_pairs


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.class_search", description=__doc__)
    p.add_argument("--classes", type=int, default=85742)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--block", type=int, default=4096)
    p.add_argument("--threshold", type=float, default=0.3, help="far above random 512-d unit vectors' cosines")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    print(environment.summary(args.device))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.classes, args.dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[1] = x[0]  # one planted pair, which the search must find
    t0 = time.perf_counter()
    found = close_pairs(x, args.threshold, block=args.block, device=args.device, desc="class search")
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    ok = len(found) >= 1 and (found.i[0], found.j[0]) == (0, 1)
    pairs = args.classes * (args.classes - 1) / 2
    print(f"{args.classes} classes x {args.dim} dims: {seconds:.1f} s ({pairs / seconds / 1e9:.2f} G pairs/s), "
          f"{len(found)} pairs above {args.threshold}, planted pair found: {ok}; peak tile "
          f"{args.block ** 2 * 4 / 2**20:.0f} MB")
    scale = (2_000_000 / args.classes) ** 2
    print(f"2,000,000 classes by O(C^2 D): {seconds * scale / 60:.0f} min on this device ({scale:.0f} x)")


if __name__ == "__main__":
    main()
