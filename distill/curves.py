"""`python -m distill plot RUN [RUN ...] --output curves.png`: loss, lr and verification accuracy against
step for one or several runs (their metrics.jsonl), on shared axes, as one PNG.

matplotlib draws with its Agg backend (no display needed), imported here only, when a plot is drawn.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from common.errors import InputError
from common.files import atomic_path
from distill.metrics import read_records


class CurvesError(InputError):
    """A run folder with no metrics.jsonl, or nothing in it to draw."""


@dataclass(frozen=True)
class Curves:
    """One run's points: (step, value) pairs, in the order metrics.jsonl holds them."""
    name: str
    loss: tuple[tuple[int, float], ...]
    lr: tuple[tuple[int, float], ...]
    accuracy: dict[str, tuple[tuple[int, float], ...]]   # verification set name -> points

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Curves.name: expected a non-empty run name, found ''")


def load(run: Path, name: Optional[str] = None) -> Curves:
    """The curves of the run in folder `run`, named `name` (default: the folder's name)."""
    path = Path(run) / "metrics.jsonl"
    if not path.is_file():
        raise CurvesError(f"{run}: no metrics.jsonl here (expected a run directory written by `python -m distill`)")
    loss, lr, accuracy = [], [], {}
    for record in read_records(path):
        step = record.get("step")
        if not isinstance(step, int):
            continue
        if record.get("event") == "verification" and record.get("accuracy") is not None:
            accuracy.setdefault(Path(str(record.get("target"))).stem, []).append((step, float(record["accuracy"])))
        elif "event" not in record:
            if record.get("loss") is not None:
                loss.append((step, float(record["loss"])))
            if record.get("lr") is not None:
                lr.append((step, float(record["lr"])))
    if not (loss or lr or accuracy):
        raise CurvesError(f"{run}: nothing to draw in {path}: no training record (loss, lr) and no verification "
                          f"record (accuracy)")
    return Curves(name or Path(run).resolve().name, tuple(loss), tuple(lr),
                  {target: tuple(points) for target, points in accuracy.items()})


def draw(runs: Sequence[Curves], output: Path) -> Path:
    """Three panels sharing the step axis (loss, lr, accuracy), one colour per run; written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the file is the product
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_lr, ax_acc) = plt.subplots(3, 1, sharex=True, figsize=(8, 9), constrained_layout=True)
    try:
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        styles = ("-", "--", ":", "-.")
        for i, run in enumerate(runs):
            colour = colours[i % len(colours)]
            for ax, points in ((ax_loss, run.loss), (ax_lr, run.lr)):
                if points:
                    ax.plot(*zip(*points), color=colour, label=run.name)
            for j, (target, points) in enumerate(sorted(run.accuracy.items())):
                ax_acc.plot(*zip(*points), color=colour, linestyle=styles[j % len(styles)], marker="o",
                            label=f"{run.name}: {target}")
        lrs = [value for run in runs for _, value in run.lr]
        if lrs and min(lrs) > 0:
            ax_lr.set_yscale("log")  # the multistep decays are steps of 10x
        for ax, label, empty in ((ax_loss, "loss", "no loss logged"), (ax_lr, "lr", "no lr logged"),
                                 (ax_acc, "verification accuracy", "no verification (eval.targets) in these runs")):
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            if not ax.get_legend_handles_labels()[0]:
                ax.text(0.5, 0.5, empty, transform=ax.transAxes, ha="center", va="center")
            elif ax is not ax_lr:  # the lr panel's colours are the loss panel's
                ax.legend(fontsize="small")
        ax_acc.set_xlabel("step")
        with atomic_path(output, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return Path(output)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = _parse_args(argv)
    names = args.names or [None] * len(args.runs)
    written = draw([load(run, name) for run, name in zip(args.runs, names)], args.output)
    print(f"curves of {len(args.runs)} run(s) written to {written}")


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m distill plot",
                                     description="Draw loss, lr and verification accuracy against step for runs.")
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories (each with metrics.jsonl)")
    parser.add_argument("--output", required=True, type=Path, help="the PNG to write (replaced atomically)")
    parser.add_argument("--names", nargs="+", default=None, metavar="NAME",
                        help="legend names, one per run (default: each run directory's name)")
    args = parser.parse_args(argv)
    if args.output.suffix.lower() != ".png":
        parser.error(f"--output: expected a .png file, found {str(args.output)!r}")
    if args.names is not None and len(args.names) != len(args.runs):
        parser.error(f"--names: expected one name per run ({len(args.runs)}), found {len(args.names)}")
    return args
