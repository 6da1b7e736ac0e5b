"""Reports of one run: the stdout table with its header, the JSON document, Markdown, and the optional plot."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

from bench.settings import BenchError
from common.files import atomic_path, write_atomic

FORMAT = "adadistill-bench"
VERSION = 1


def document(environment: dict, dataset: Optional[dict], settings: dict, results: Sequence, wall_s: float,
             skipped: Sequence = (), growth=None) -> dict:
    """The JSON document: `environment` (with the dataset block; None when only the growth stage ran, which
    writes its own), the run's settings, `results`, `skipped`: the contenders left out on this machine, each
    with its reason (harness.Skipped), and `growth` where that stage ran (bench.stages.growth.Growth)."""
    env = dict(environment, dataset=dataset)
    rows = []
    for r in results:
        row = asdict(r)
        row["spread"], row["baseline_spread"] = list(r.spread), list(r.baseline_spread)
        rows.append(row)
    doc = {"format": FORMAT, "version": VERSION, "environment": env, "settings": settings, "results": rows,
           "skipped": [asdict(s) for s in skipped], "wall_s": round(wall_s, 1)}
    if growth is not None:
        doc["growth"] = json.loads(json.dumps(asdict(growth)))  # tuples as the JSON's lists
    return doc


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _goal(row: dict) -> str:
    goal = row.get("goal")
    if goal is None:
        return ""
    met = "met" if row["ratio"] >= goal else "NOT met"
    return f">= {goal:.3g} ({met})"


def _wait(row: dict) -> str:
    if row.get("data_wait") is None:
        return ""
    base = row.get("baseline_data_wait")
    return f"{row['data_wait']:.0%} vs {base:.0%}" if base is not None else f"{row['data_wait']:.0%}"


_COLUMNS = ("stage", "what", "img/s median (min-max)", "baseline", "baseline img/s (min-max)", "ratio", "goal",
            "data wait")


def _cells(row: dict) -> list:
    lo, hi = row["spread"]
    blo, bhi = row["baseline_spread"]
    return [row["stage"], row["name"], f"{_rate(row['img_per_s'])} ({_rate(lo)}-{_rate(hi)})", row["baseline"],
            f"{_rate(row['baseline_img_per_s'])} ({_rate(blo)}-{_rate(bhi)})", f"{row['ratio']:.2f}", _goal(row),
            _wait(row)]


def header_lines(doc: dict) -> list:
    env, ds = doc["environment"], doc["environment"]["dataset"]
    gpu = f"{env['gpu']} (driver {env['gpu_driver'] or 'unknown'}, CUDA {env['cuda_runtime']})" if env["gpu"] \
        else "none"
    data = (f"data: {ds['source']} | {ds['images']} images, {ds['classes']} classes, {ds['image_size']}px | "
            f".rec {ds['rec_bytes'] / 2**20:.1f} MiB | mean image {ds['mean_image_bytes']:.0f} bytes") if ds else \
        "data: the growth stage's own, a .rec of each size"
    return [
        f"host {env['host']} | {env['cpu_model']} | {env['cpu_cores_usable']} usable of {env['cpu_cores']} cores | "
        f"load average at start {env['load_average_at_start']}, at end {env.get('load_average_at_end')}",
        f"GPU {gpu} | measuring on {env['device']} | torch threads {env['torch_threads']} "
        f"{env.get('thread_env') or ''}".rstrip(),
        f"python {env['python']} | torch {env['torch']} | DALI {env['dali']} | numpy {env['numpy']} | "
        f"simplejpeg {env['simplejpeg']} | Pillow {env['pillow']} | torchvision {env.get('torchvision')}",
        data,
        "settings: " + ", ".join(f"{k}={v}" for k, v in doc["settings"].items()),
    ]


def table(doc: dict) -> str:
    """The stdout report: header lines (#), then one aligned row per pair, then what each contender is."""
    lines = ["# " + line for line in header_lines(doc)]
    if doc["results"]:
        lines += _aligned([list(_COLUMNS)] + [_cells(r) for r in doc["results"]]) + [""]
    if doc.get("growth"):
        lines += [_growth_title(doc["growth"])] + _aligned(_growth_rows(doc["growth"])) + [_GROWTH_NOTE, ""]
    lines += [f"  {name}: {what}" for name, what in _descriptions(doc).items()]
    lines += [f"  left out: {s['stage']}/{s['name']}: {s['reason']}" for s in doc.get("skipped", ())]
    return "\n".join(lines)


def _aligned(rows: list) -> list:
    """Rows of cells as aligned lines, a rule under the first."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return lines[:1] + ["  ".join("-" * w for w in widths)] + lines[1:]


_GROWTH_NOTE = ("  f(N) = a + b * N through the points (least squares); exponent = log(f(N_max) / f(N_min)) / "
                "log(N_max / N_min): 1 linear, 0 flat")


def _growth_title(growth: dict) -> str:
    return (f"growth: one run per size, {growth['workers']} worker(s), batch {growth['batch_size']} on "
            f"{growth['device']}; classes " + ", ".join(f"{p['classes']:,}" for p in growth["points"]))


def _value(x: float, unit: str) -> str:
    return f"{x:,.1f} {unit}" if abs(x) < 10_000 else f"{x:,.0f} {unit}"


def _per_record(slope: float, unit: str) -> str:
    """The fit's slope in a readable unit: microseconds or bytes a record."""
    return f"{slope * 1e6:,.2f} us" if unit == "s" else f"{slope * 2**20:,.1f} B"


def _growth_rows(growth: dict) -> list:
    points, fits = growth["points"], {f["figure"]: f for f in growth["fits"]}
    targets = next(iter(fits.values()))["extrapolated"] if fits else {}
    head = ["figure"] + [f"N={p['records']:,}" for p in points]
    if fits:
        head += ["exponent", "a", "b (a record)"] + [f"{name} ({size / 1e6:g}M)" for name, (size, _) in targets.items()]
    rows = [head]
    for figure, description, unit in growth["figures"]:
        row = [description] + [_value(p[figure], unit) for p in points]
        f = fits.get(figure)
        if f is not None:
            row += [f"{f['exponent']:.2f}", _value(f["intercept"], unit), _per_record(f["slope"], unit)]
            row += [_value(value, unit) for _, value in f["extrapolated"].values()]
        rows.append(row)
    return rows


def _descriptions(doc: dict) -> dict:
    out: dict = {}
    for r in doc["results"]:
        out.setdefault(r["name"], r["description"])
        out.setdefault(r["baseline"], r["baseline_description"])
    return out


def markdown(doc: dict) -> str:
    lines = ["# AdaDistill benchmark", ""] + [f"- {line}" for line in header_lines(doc)] + [""]
    if doc.get("growth"):
        rows = _growth_rows(doc["growth"])
        lines += [_growth_title(doc["growth"]), "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(row) + " |" for row in rows[1:]] + ["", _GROWTH_NOTE.strip(), ""]
    if not doc["results"]:
        return "\n".join(lines)
    lines.append("| " + " | ".join(_COLUMNS) + " |")
    lines.append("|" + "---|" * len(_COLUMNS))
    for r in doc["results"]:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |")
    lines += ["", "Contenders:", ""] + [f"- `{name}`: {what}" for name, what in _descriptions(doc).items()]
    if doc.get("skipped"):
        lines += ["", "Left out on this machine:", ""] + [f"- `{s['stage']}/{s['name']}`: {s['reason']}"
                                                         for s in doc["skipped"]]
    lines += ["", f"Medians and (min-max) over {doc['settings'].get('repeats')} interleaved rounds after "
                  f"{doc['settings'].get('warmup')} warm-up round(s); ratio = median / baseline median.", ""]
    return "\n".join(lines)


def write_json(path: Path, doc: dict) -> None:
    write_atomic(path, json.dumps(doc, indent=1) + "\n")  # keys in document order, not sorted


def write_markdown(path: Path, doc: dict) -> None:
    write_atomic(path, markdown(doc))


def check_plot_available() -> Optional[str]:
    """None when --plot can work, else why not (checked before any measuring)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return ("--plot needs matplotlib (a dependency of this project), which is not installed here: "
                "pip install matplotlib, or leave --plot out")
    return None


def plot(path: Path, doc: dict) -> None:
    """Horizontal img/s bars, one pair a row (contender over its baseline), min-max as error bars."""
    reason = check_plot_available()
    if reason:
        raise BenchError(reason)
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rows = doc["results"]
    fig, ax = plt.subplots(figsize=(9, 0.9 * len(rows) + 1.2))
    ys = range(len(rows))
    for y, r in zip(ys, rows):
        for offset, value, spread, colour, label in (
                (-0.2, r["img_per_s"], r["spread"], "tab:blue", "measured"),
                (0.2, r["baseline_img_per_s"], r["baseline_spread"], "tab:grey", "baseline")):
            err = [[value - spread[0]], [spread[1] - value]]
            ax.barh(y + offset, value, height=0.38, color=colour, xerr=err, capsize=3,
                    label=label if y == 0 else None)
        ax.text(r["spread"][1] * 1.1, y - 0.2, f"x{r['ratio']:.2f}", va="center", fontsize=8)
    ax.set_yticks(list(ys), [f"{r['stage']}: {r['name']}\nvs {r['baseline']}" for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("images / s (median, min-max)")
    env = doc["environment"]
    ax.set_title(f"AdaDistill bench on {env['device']}: {env['cpu_model']}, {env['gpu'] or 'no GPU'}", fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:  # savefig picks the format from the file name
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
