"""`python -m bench.env_report --device cpu|cuda [--shards DIR]`: the environment a GPU check ran in, a fact a line.

What bench/environment.py puts in every report's header (CPU, GPU, driver, CUDA, library versions) and, given
shards: whether the torchvision_nvjpeg baseline can decode on the device (bench/torchvision_decode.py) and which
decoder the training loader uses there (`loader.decoder` where the pipeline exposes it; else what can be told).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

from bench.settings import BenchError
from common.errors import run_command

PROG = "python -m bench.env_report"


def _decoder(shards: Path, device: str) -> str:
    """The training loader's decoder on `device`, after it delivered one batch."""
    import pipeline

    samples = pipeline.ShardSamples(shards)
    loader = pipeline.build_loader(shards, min(8, samples.num_samples), device=device, backend="dali")
    it = iter(loader)
    try:
        batch = next(it)
    finally:
        close = getattr(it, "close", None)  # a generator (the DALI loader) frees its graph now
        if close is not None:
            close()
    got = f"first batch {tuple(batch.images.shape)} {batch.images.dtype} on {batch.images.device}"
    decoder = getattr(loader, "decoder", None)
    if decoder is None:
        return f"not exposed by this pipeline (no loader.decoder); {type(loader).__name__} on {device}, {got}"
    return f"{decoder}; {got}"


def lines(device: str, shards: Optional[Path]) -> Iterator[str]:
    """The report, a line at a time (each printed as soon as it is known)."""
    import torch

    from bench import environment, torchvision_decode
    from common.errors import InputError

    if device == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"--device cuda: torch {torch.__version__} (CUDA build {torch.version.cuda}) finds no CUDA "
                         f"device")
    env = environment.collect(device)
    yield from (f"{key}: {value}" for key, value in env.items())
    yield f"cuda_available: {torch.cuda.is_available()} | cudnn: {torch.backends.cudnn.version()}"
    if shards is None:
        yield "torchvision_nvjpeg, decoder: not probed (no --shards)"
        return
    import numpy as np
    import pipeline

    probe = pipeline.ShardSamples(shards).encoded(np.arange(1))[0].tobytes()
    reason = torchvision_decode.unavailable(device, probe)
    yield f"torchvision_nvjpeg: {'decodes on ' + device if reason is None else 'left out: ' + reason}"
    try:
        yield f"decoder: {_decoder(shards, device)}"
    except InputError as err:  # DALI missing or unable to decode here: a fact to report, which later steps will meet
        yield f"decoder: none: the DALI loader cannot run on {device}: {err}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), required=True)
    p.add_argument("--shards", type=Path, help="JPEG shards to probe the decoders with")
    args = p.parse_args(argv)

    def run() -> int:
        for line in lines(args.device, args.shards):
            print(line, flush=True)
        return 0

    return run_command(PROG, run)


if __name__ == "__main__":
    sys.exit(main())
