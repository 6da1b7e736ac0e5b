"""Pipeline speed on the CPU: DALI and torch loaders against an insightface-style baseline and the
decode ceiling, over the same synthetic 112x112 JPEG q95 data (and its raw-encoded shards).

    python -m bench.pipeline_speed [--identities 100] [--per-identity 60] [--batch-size 256] [--repeats 3]
                                   [--cuda] [--workdir DIR]

Prints a hardware/software header, img/s of every contender (best of --repeats interleaved rounds of
one epoch each, after a warm-up epoch) and the issue's ratios. Asserts nothing: benchmarks are not tests.
"""
from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import simplejpeg
import torch
from PIL import Image

import pipeline
from convert.recordio import RecordReader, unpack
from convert.synth import write_synthetic
from pipeline.device import cpu_threads


class RecDataset(torch.utils.data.Dataset):
    """insightface's MXFaceDataset, without mxnet: index from record 0, Pillow decode, flip, ToTensor-normalize."""

    def __init__(self, root: Path) -> None:
        self.root, self._reader = root, None
        with RecordReader(root / "train.rec", root / "train.idx") as reader:
            header, _ = unpack(reader.read(0))
            self.keys = list(range(1, int(header.label[0])))

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        if self._reader is None:  # one file handle per worker: a forked handle shares its seek position
            self._reader = RecordReader(self.root / "train.rec", self.root / "train.idx")
        header, payload = unpack(self._reader.read(self.keys[i]))
        img = Image.open(io.BytesIO(payload)).convert("RGB")
        if torch.rand(1).item() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div_(255)  # ToTensor
        label = header.label if np.isscalar(header.label) else header.label[0]
        return x.sub_(0.5).div_(0.5), int(label)  # Normalize(mean=0.5, std=0.5)


def _epoch_rate(make_iterable) -> float:
    start, n = time.perf_counter(), 0
    for item in make_iterable():
        n += len(item.labels) if isinstance(item, pipeline.Batch) else len(item[1])
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # the last batch's copy may still be in flight
    return n / (time.perf_counter() - start)


def interleaved_best(contenders: dict, repeats: int) -> dict:
    """Best epoch rate of each contender, after one warm-up epoch each. The contenders take turns
    round by round, so a burst of load from elsewhere on the machine hits all of them alike."""
    for make in contenders.values():
        make(warm_up=True)
    best = {name: 0.0 for name in contenders}
    for _ in range(repeats):
        for name, make in contenders.items():
            best[name] = max(best[name], make(warm_up=False))
    return best


_JPEGS: list = []


def _decode_share(args) -> float:
    part, parts = args
    share = _JPEGS[part::parts]
    start = time.perf_counter()
    for data in share:
        simplejpeg.decode_jpeg(data, colorspace="RGB")
    return time.perf_counter() - start


class DecodeCeiling:
    """simplejpeg (libjpeg-turbo) decoding alone, one process per core, data already in memory."""

    def __init__(self, jpegs: list) -> None:
        global _JPEGS
        _JPEGS = jpegs  # forked workers inherit it: nothing is sent while the clock runs
        self.n, self.procs = len(jpegs), cpu_threads()
        self.pool = multiprocessing.get_context("fork").Pool(self.procs)

    def __call__(self, warm_up: bool) -> float:
        return self.n / max(self.pool.map(_decode_share, [(p, self.procs) for p in range(self.procs)]))

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--identities", type=int, default=100)
    ap.add_argument("--per-identity", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cuda", action="store_true", help="also time the DALI loader on the GPU (mixed decoder)")
    ap.add_argument("--workdir", default=None, help="keep the data here (default: a temporary directory)")
    args = ap.parse_args(argv)

    import nvidia.dali

    from convert import convert_rec  # late: the helpers above need only recordio

    print(f"# host: {platform.node()} | {platform.processor() or platform.machine()} | usable cores {cpu_threads()}")
    print(f"# python {platform.python_version()} | torch {torch.__version__} | DALI {nvidia.dali.__version__} | "
          f"simplejpeg {simplejpeg.__version__} | Pillow {Image.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        rec, jpeg_dir, raw_dir = work / "rec", work / "shards-jpeg", work / "shards-raw"
        if not (rec / "train.rec").exists():
            write_synthetic(rec, args.identities, args.per_identity, seed=0, fmt="rec")
        if not (jpeg_dir / "manifest.json").exists():
            convert_rec(rec, jpeg_dir)
        if not (raw_dir / "manifest.json").exists():
            convert_rec(rec, raw_dir, encoding="raw")
        B, R = args.batch_size, args.repeats
        dataset = RecDataset(rec)
        with RecordReader(rec / "train.rec", rec / "train.idx") as reader:
            jpegs = [unpack(reader.read(k))[1] for k in dataset.keys]
        print(f"# data: {len(jpegs)} images 112x112 JPEG q95, batch {B}, "
              f"best of {R} interleaved rounds after one warm-up")

        def loader(shards, backend, device="cpu"):
            return lambda warm_up: _epoch_rate(
                lambda: pipeline.build_loader(shards, B, device=device, backend=backend))

        ceiling = DecodeCeiling(jpegs)
        contenders = {
            "baseline": lambda warm_up: _epoch_rate(lambda: torch.utils.data.DataLoader(
                dataset, batch_size=B, shuffle=True, num_workers=2, drop_last=True)),
            "ceiling": ceiling,
            "dali_jpeg": loader(jpeg_dir, "dali"),
            "dali_raw": loader(raw_dir, "dali"),
            "torch_jpeg": loader(jpeg_dir, "torch"),
        }
        if args.cuda:
            contenders["dali_jpeg_cuda"] = loader(jpeg_dir, "dali", "cuda")
            contenders["dali_raw_cuda"] = loader(raw_dir, "dali", "cuda")
        try:
            rates = interleaved_best(contenders, R)
        finally:
            ceiling.close()
        for name, rate in rates.items():
            print(f"{name:12s} {rate:10.0f} img/s")
        print(f"ratio dali_jpeg / baseline  = {rates['dali_jpeg'] / rates['baseline']:.2f}  (goal >= 4)")
        print(f"ratio dali_jpeg / ceiling   = {rates['dali_jpeg'] / rates['ceiling']:.2f}  (goal >= 0.6)")
        print(f"ratio dali_raw / dali_jpeg  = {rates['dali_raw'] / rates['dali_jpeg']:.2f}  (goal >= 3)")
        print(f"ratio torch_jpeg / baseline = {rates['torch_jpeg'] / rates['baseline']:.2f}")


if __name__ == "__main__":
    main()
