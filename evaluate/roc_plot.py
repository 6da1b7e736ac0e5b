"""The ROC of one or several models on one pair set (TAR against log FAR), their operating points marked.

matplotlib draws with its Agg backend (no display needed), imported here only, when a plot is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from common.files import atomic_path


@dataclass(frozen=True)
class Curve:
    name: str
    far: np.ndarray  # the ROC's points (sklearn roc_curve's fpr, tpr)
    tar: np.ndarray
    points: dict  # {asked FAR: {"threshold", "tar", "far"}} (thresholds.operating_points' supported ones)


def draw(curves: Sequence[Curve], set_name: str, impostors: int, output: str | Path) -> Path:
    """One line per model; each operating point a marker labelled with its cosine threshold; written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display: the file is the product
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), constrained_layout=True)
    try:
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, c in enumerate(curves):
            colour = colours[i % len(colours)]
            keep = c.far > 0  # FAR 0 has no place on a log axis
            # Every ROC point (drop_intermediate=False): consecutive points differ in one coordinate (or both on a
            # tie of scores), so the lines between them are the empirical curve's steps.
            ax.plot(c.far[keep], c.tar[keep], color=colour, label=c.name)
            for asked, p in c.points.items():
                ax.plot([p["far"]], [p["tar"]], "o", color=colour)
                ax.annotate(f"{p['threshold']:.3f} @ {asked:g}", (p["far"], p["tar"]), textcoords="offset points",
                            xytext=(4, -10 - 8 * i), fontsize="x-small", color=colour)
        ax.set_xscale("log")
        ax.set_xlim(1.0 / max(impostors, 1), 1.0)
        ax.set_ylim(0.0, 1.01)
        ax.set_xlabel(f"FAR (false accept rate; {impostors} impostor pairs)")
        ax.set_ylabel("TAR (true accept rate)")
        ax.set_title(f"ROC on {set_name}; points: cosine threshold @ FAR")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
        with atomic_path(output, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return Path(output)
