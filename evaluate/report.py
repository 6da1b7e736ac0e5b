"""Evaluation reports: JSON per checkpoint, flattened CSV rows, and a printed table.

Files are written with `common.files.write_atomic`, so a reader never sees half a report, and a write
that fails for want of space or permission raises common.files.WriteError naming the file.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from common.errors import InputError
from common.files import write_atomic

REPORT_KEYS = ("checkpoint", "network", "step", "results")


class ReportError(InputError, ValueError):
    """A file where a report should be that is not one `python -m evaluate` wrote."""


def _key(k) -> str:
    return f"{k:g}" if isinstance(k, float) else str(k)


def jsonable(obj):
    """Float dict keys (FAR values) become strings such as "0.0001"; numpy scalars become Python's."""
    if isinstance(obj, Mapping):
        return {_key(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj


def flatten(obj, prefix: str = "") -> dict:
    """{"lfw/acc": 0.99, "IJBC/1:1/Norm:False_Det:True/0.0001/tar": ...}: one column per number."""
    out = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}/{_key(k)}" if prefix else _key(k)))
    elif isinstance(obj, (list, tuple)):
        out[prefix] = "; ".join(str(v) for v in obj)
    else:
        out[prefix] = obj
    return out


def write_json(path: str | Path, report: Mapping) -> None:
    write_atomic(path, json.dumps(jsonable(report), indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> dict:
    """A report written by `write_json`, checked to hold REPORT_KEYS; ReportError naming the file if not."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: cannot read this report ({err}); delete it to evaluate its checkpoint "
                          f"again") from None
    missing = [k for k in REPORT_KEYS if not isinstance(report, dict) or k not in report]
    if missing:
        raise ReportError(f"{path}: not a report of python -m evaluate (no {', '.join(missing)}); delete it to "
                          f"evaluate its checkpoint again")
    return report


def write_csv(path: str | Path, rows: Iterable[Mapping], columns: Optional[Sequence[str]] = None) -> None:
    """One line per row under a header: `columns` (written even without rows; other keys left out), or
    every key of the rows in the order first seen."""
    rows = list(rows)
    if columns is None:
        columns = []
        for r in rows:
            columns += [c for c in r if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buf.getvalue())


def table(results: Mapping) -> str:
    """One line per target with its headline numbers (percent)."""
    lines = [f"{'target':<10} {'result'}"]
    for target, r in results.items():
        if "acc" in r:
            text = (f"acc {100 * r['acc']:.2f} +- {100 * r['std']:.2f}  VAL@FAR1e-3 {100 * r['val']:.2f}  "
                    f"XNorm {r['xnorm']:.2f}  ({r['pairs']} pairs)")
        elif "1:1" in r:
            parts = [f"{cfg} TAR@1e-4 {100 * v[1e-4]['tar']:.2f}" for cfg, v in r["1:1"].items()
                     if cfg != "headline" and 1e-4 in v]
            text = "  ".join(parts)
            for g, gr in r.get("1:N", {}).items():
                text += f"  | 1:N {g} rank-1 {100 * gr['rank-1']:.2f}"
        else:
            text = "  ".join(f"{k} {v:.2f}" for k, v in r.items() if k.startswith("rank-"))
        lines.append(f"{target:<10} {text}")
    return "\n".join(lines)
