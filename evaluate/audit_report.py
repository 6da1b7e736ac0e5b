"""The data audit's outputs in DIR: audit.json, conflicts.csv, outliers.csv, duplicates.csv, the decision
files for `python -m convert`, and index.html with its thumbnails.

- audit.json: what was audited (sets, model, per-class), both thresholds and how they were chosen, and
  every finding with its scores, classes and keys.
- decisions/<set>/: exclude-keys.txt (outliers and identical-bytes copies but the first; near-duplicate
  embeddings as '#' lines to uncomment), merge-classes.txt (each group of conflicting classes of the set
  into its first, `FROM -> TO`), exclude-classes.txt (classes that conflict with an earlier set's: the
  person is already there). Source names (convert.source_keys, the overlap report's class map): what
  `python -m convert rec|folder SRC OUT --exclude-keys ... --merge-classes ... --exclude-classes ...` reads.
  A set whose source cannot be read gets no exclude-keys.txt, and a warning says why.
- index.html: a static page (no script, no server), thumbnails in thumbs/ beside it: each conflict's two
  classes side by side, each outlier beside typical images of its class, each duplicate pair, most
  confident first, with the scores. Every shown item is an element of class "item" with data-kind.
Every file is written atomically (common.files).
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from common.files import write_atomic
from evaluate.audit import Embedded, Findings, conflict_groups
from evaluate.overlap_report import source_class
from evaluate.report import write_csv

THUMB = 64  # pixels: small enough for pages of thousands of items
TYPICAL = 4  # images shown per class


def _name(m, c: int) -> str:
    return str(source_class(m, c))


def build(*, checkpoint: dict, sets: Sequence[dict], e: Embedded, f: Findings, byte_groups: Sequence[list],
          per_class: Optional[int], device: str, warnings: Sequence[str]) -> dict:
    """sets: {"name", "shards", "manifest", "source_keys" (list or None)} each, in the order of e's sets."""
    def where(d: int, key: int) -> dict:
        names = sets[d]["source_keys"]
        return {"set": sets[d]["name"], "key": int(key), "source_key": names[key] if names is not None else None}

    def cls(c: int) -> dict:
        d = int(e.dataset_of_class(np.asarray([c]))[0])
        local = c - e.class_offsets[d]
        return {"set": sets[d]["name"], "class": int(local), "source_class": _name(sets[d]["manifest"], local)}

    conflicts = [{"a": cls(a), "b": cls(b), "similarity": round(s, 6)} for a, b, s in f.conflicts]
    outliers = [{**where(int(e.dataset[r]), int(e.key[r])), "class": cls(int(e.cls[r])),
                 "similarity_to_own_class": round(s, 6), "nearest_other_class": cls(n),
                 "similarity_to_nearest": round(ns, 6)} for r, s, n, ns in f.outliers]
    duplicates = [{"kind": "identical bytes", "a": where(d, g[0]), "b": where(d, k), "similarity": 1.0}
                  for d, groups in enumerate(byte_groups) for g in groups for k in g[1:]]
    duplicates += [{"kind": "near-identical embedding", "a": where(int(e.dataset[i]), int(e.key[i])),
                    "b": where(int(e.dataset[j]), int(e.key[j])), "similarity": round(s, 6)}
                   for i, j, s in f.near_duplicates]
    return {**checkpoint, "device": device, "per_class": per_class, "images_embedded": int(e.emb.shape[0]),
            "sets": [{"name": s["name"], "shards": str(s["shards"]), "num_classes": s["manifest"].num_classes,
                      "num_samples": s["manifest"].num_samples} for s in sets],
            "conflict_threshold": f.conflict_threshold, "outlier_threshold": f.outlier_threshold,
            "rounds": f.rounds, "conflicts": conflicts, "outliers": outliers, "duplicates": duplicates,
            "conflict_groups": [[cls(c) for c in g] for g in conflict_groups(f.conflicts)],
            "warnings": list(warnings)}


def _flat(prefix: str, d: dict) -> dict:
    return {f"{prefix}{k}": v for k, v in d.items()}


def write_csvs(folder: Path, report: dict) -> None:
    rows = {"conflicts.csv": [{**_flat("a_", c["a"]), **_flat("b_", c["b"]), "similarity": c["similarity"]}
                              for c in report["conflicts"]],
            "outliers.csv": [{"set": o["set"], "key": o["key"], "source_key": o["source_key"],
                              **_flat("", o["class"]) | {"set": o["set"]},
                              "similarity_to_own_class": o["similarity_to_own_class"],
                              **_flat("nearest_", o["nearest_other_class"]),
                              "similarity_to_nearest": o["similarity_to_nearest"]} for o in report["outliers"]],
            "duplicates.csv": [{"kind": d["kind"], **_flat("a_", d["a"]), **_flat("b_", d["b"]),
                                "similarity": d["similarity"]} for d in report["duplicates"]]}
    columns = {"conflicts.csv": ["a_set", "a_class", "a_source_class", "b_set", "b_class", "b_source_class",
                                 "similarity"],
               "outliers.csv": ["set", "key", "source_key", "class", "source_class", "similarity_to_own_class",
                                "nearest_set", "nearest_class", "nearest_source_class", "similarity_to_nearest"],
               "duplicates.csv": ["kind", "a_set", "a_key", "a_source_key", "b_set", "b_key", "b_source_key",
                                  "similarity"]}
    for name, table in rows.items():
        write_csv(folder / name, table, columns[name])


def decision_files(report: dict) -> dict:
    """{relative path: text} of the decision files (module docstring), one folder per set."""
    out = {}
    head = (f"# python -m evaluate audit, checkpoint {report['checkpoint']}; review index.html, then edit this "
            f"file (delete a line to keep, uncomment a '#' finding to apply it)")
    for s in report["sets"]:
        name = s["name"]
        keys = [head, f"# images to leave out of {s['shards']}'s source: python -m convert ... --exclude-keys THIS_FILE"]
        have_keys = True
        for o in report["outliers"]:
            if o["set"] == name:
                have_keys &= o["source_key"] is not None
                keys += [f"# outlier of class {o['class']['source_class']}: similarity "
                         f"{o['similarity_to_own_class']:.4f}, nearest {o['nearest_other_class']['source_class']} "
                         f"({o['nearest_other_class']['set']}) {o['similarity_to_nearest']:.4f}", str(o["source_key"])]
        for d in report["duplicates"]:
            if d["b"]["set"] == name:
                have_keys &= d["b"]["source_key"] is not None
                keys.append(f"# {d['kind']} of {d['a']['source_key']} ({d['a']['set']}), {d['similarity']:.4f}:")
                keys.append(str(d["b"]["source_key"]) if d["kind"] == "identical bytes" else f"# {d['b']['source_key']}")
        if have_keys:
            out[f"decisions/{name}/exclude-keys.txt"] = "\n".join(keys) + "\n"
        merges = [head, "# one person under several labels: python -m convert ... --merge-classes THIS_FILE"]
        excluded = [head, "# classes an earlier set already holds: python -m convert ... --exclude-classes THIS_FILE"]
        for group in report["conflict_groups"]:
            first = group[0]
            for c in group[1:]:
                if c["set"] == name and first["set"] == name:
                    merges.append(f"{c['source_class']} -> {first['source_class']}")
                elif c["set"] == name:
                    excluded += [f"# the same person as {first['source_class']} of {first['set']}:", c["source_class"]]
        out[f"decisions/{name}/merge-classes.txt"] = "\n".join(merges) + "\n"
        out[f"decisions/{name}/exclude-classes.txt"] = "\n".join(excluded) + "\n"
    return out


def _thumb(folder: Path, samples, encoding: str, set_name: str, key: int) -> str:
    """Write thumbs/<set>-<key>.jpg (once) from the stored image; its path relative to the page."""
    rel = f"thumbs/{set_name}-{key:09d}.jpg"
    path = folder / rel
    if not path.exists():
        data = samples.encoded(np.asarray([key]))[0]
        if encoding == "raw":
            img = Image.fromarray(np.asarray(data, np.uint8).reshape(samples.image_size, samples.image_size, 3))
        else:
            img = Image.open(io.BytesIO(bytes(data))).convert("RGB")
        img.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        write_atomic(path, buf.getvalue())
    return rel


STYLE = """body{font-family:sans-serif;margin:1em}.item{border:1px solid #ccc;margin:.5em 0;padding:.4em}
.side{display:inline-block;vertical-align:top;margin-right:1.5em}.score{font-weight:bold}img{margin:1px}
.odd{outline:3px solid #c00}"""


def write_html(folder: Path, report: dict, samples: Sequence, e: Embedded) -> None:
    """index.html and its thumbnails (module docstring). samples: pipeline.ShardSamples of each set."""
    index = {s["name"]: d for d, s in enumerate(report["sets"])}
    outlier_rows = {(o["set"], o["key"]) for o in report["outliers"]}

    def img(set_name: str, key: int, odd: bool = False) -> str:
        d = index[set_name]
        src = _thumb(folder, samples[d], samples[d].encoding, set_name, key)
        return (f'<img src="{html.escape(src)}" width="{THUMB}" height="{THUMB}" alt="{html.escape(set_name)} '
                f'key {key}"{" class=odd" if odd else ""}>')

    def typical(c: dict, skip: Optional[int] = None) -> str:
        g = e.class_offsets[index[c["set"]]] + c["class"]
        rows = [r for r in np.flatnonzero(e.cls == g)
                if int(e.key[r]) != skip and (c["set"], int(e.key[r])) not in outlier_rows][:TYPICAL]
        return "".join(img(c["set"], int(e.key[r])) for r in rows)

    def label(c: dict) -> str:
        return html.escape(f"{c['set']}: class {c['source_class']} (label {c['class']})")

    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>Data audit</title><style>{STYLE}</style>"
             f"</head><body><h1>Data audit</h1><p>{html.escape(report['checkpoint'])}: "
             f"{report['images_embedded']} images of {', '.join(html.escape(s['name']) for s in report['sets'])}"
             f".</p><p>Conflict threshold: {html.escape(report['conflict_threshold']['how'])}<br>Outlier "
             f"threshold: {html.escape(report['outlier_threshold']['how'])}</p>"]
    parts.append(f"<h2>Conflicts ({len(report['conflicts'])}): one person under two labels?</h2>")
    for c in report["conflicts"]:
        parts.append(f'<div class=item data-kind=conflict><span class=score>{c["similarity"]:.4f}</span><br>'
                     f'<div class=side>{label(c["a"])}<br>{typical(c["a"])}</div>'
                     f'<div class=side>{label(c["b"])}<br>{typical(c["b"])}</div></div>')
    parts.append(f"<h2>Outliers ({len(report['outliers'])}): a wrong label? (red: the image; then typical "
                 f"images of its class)</h2>")
    for o in report["outliers"]:
        n = o["nearest_other_class"]
        parts.append(f'<div class=item data-kind=outlier><span class=score>{o["similarity_to_own_class"]:.4f}'
                     f'</span> to its class; {o["similarity_to_nearest"]:.4f} to {label(n)}<br>'
                     f'<div class=side>{html.escape(str(o["source_key"] or o["key"]))}<br>{img(o["set"], o["key"], True)}'
                     f'</div><div class=side>{label(o["class"])}<br>{typical(o["class"], o["key"])}</div></div>')
    parts.append(f"<h2>Duplicates ({len(report['duplicates'])})</h2>")
    for d in report["duplicates"]:
        parts.append(f'<div class=item data-kind=duplicate><span class=score>{d["similarity"]:.4f}</span> '
                     f'{html.escape(d["kind"])}<br>{img(d["a"]["set"], d["a"]["key"])}'
                     f'{img(d["b"]["set"], d["b"]["key"])}</div>')
    parts.append("</body></html>\n")
    write_atomic(folder / "index.html", "".join(parts))
