"""The overlap audit's outputs: the JSON report, a CSV of its flagged (identity, class) pairs, and the exclusion list.

Every file is written atomically (common.files.write_atomic; the report and the CSV by evaluate.report).
The exclusion list is what `python -m convert rec|folder --exclude-classes FILE` reads
(convert/class_exclusion.py): a '#' header, then one source class a line, the source's own name of each
flagged class (the manifest's class_map maps our contiguous labels back to a .rec's labels or the identity
folders' names; without a class_map the label is the source's). Classes the shards were already built
without (their manifest's `exclusion`) are listed too, so that the list rebuilds the shards from the
original source without either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from common.errors import InputError
from common.files import write_atomic
from convert.manifest import Manifest
from evaluate import report as rep
from evaluate.overlap import ClassCentres, SetAudit, Threshold, by_chance

CSV_COLUMNS = ("target", "identity", "images", "images_above", "train_class", "source_class", "median_similarity",
               "max_similarity", "keys")


class ExclusionNameError(InputError, ValueError):
    """A source class name that an exclusion list cannot hold (a line of its own, read back the same)."""


def source_class(manifest: Manifest, train_class: int):
    """The source's label (a .rec's number or an identity folder's name) of contiguous class `train_class`."""
    return manifest.class_map[train_class] if manifest.class_map is not None else int(train_class)


def _overlap_row(o, manifest: Manifest) -> dict:
    return {"target": o.target, "identity": o.identity, "images": o.images, "images_above": len(o.above),
            "train_class": o.train_class, "source_class": source_class(manifest, o.train_class),
            "median_similarity": round(o.median_similarity, 6), "max_similarity": round(o.max_similarity, 6),
            "keys": list(o.above)}


PAIR_FIELDS = ("pairs", "same_pairs", "different_pairs", "mean_same_similarity", "different_similarity_p99_9",
               "different_similarity_sd")  # a pair set's own statistics; null for a set of people


def _set_row(a: SetAudit, centres: ClassCentres, chosen: Threshold) -> dict:
    s = a.stats
    pair = dict.fromkeys(PAIR_FIELDS) if s is None else dict(zip(PAIR_FIELDS, (
        s.same + s.different, s.same, s.different, s.mean_same, s.impostor_quantile, s.impostor_sd)))
    return {"path": a.set.source, "kind": a.set.kind, "images": a.images,
            "distinct_images": int(a.set.identities.images.size), "identities": len(a.set.identities),
            "single_image_identities": a.single_image_identities, **pair,
            "images_above_threshold": a.images_above, "comparisons": len(a.set.identities) * len(centres.images),
            "expected_by_chance": by_chance(chosen, len(centres.images), len(a.set.identities)),
            "overlaps": len(a.overlaps), "identities_flagged": len(a.flagged_identities),
            "single_image_identities_flagged": a.flagged_single_image,
            "classes_flagged": len(a.flagged_classes),
            "skipped": [{"key": k, "reason": r} for k, r in a.set.skipped]}


def build(*, checkpoint: dict, shards: Path, manifest: Manifest, val_data: Optional[Path], people: Sequence[Path],
          per_class: int, centres: ClassCentres, chosen: Threshold, audits: Sequence[SetAudit],
          warnings: Sequence[str], device: str, csv_path: Path, exclusions: Optional[Path]) -> dict:
    """The report: what was compared, the threshold and how it was chosen, counts per set, the flagged
    classes and every flagged (identity, class) of every set (overlap rows, CSV_COLUMNS)."""
    overlaps, flagged = [], {}
    for a in audits:
        for o in a.overlaps:
            overlaps.append(_overlap_row(o, manifest))
            f = flagged.setdefault(o.train_class, {"train_class": o.train_class,
                                                   "source_class": source_class(manifest, o.train_class),
                                                   "targets": [], "identities": 0, "max_similarity": -1.0})
            if o.target not in f["targets"]:
                f["targets"].append(o.target)
            f["identities"] += 1
            f["max_similarity"] = max(f["max_similarity"], round(o.max_similarity, 6))
    return {
        **checkpoint, "device": device,
        "shards": str(shards), "num_classes": manifest.num_classes, "num_samples": manifest.num_samples,
        "shards_exclusion": (None if manifest.exclusion is None else
                             {"file": manifest.exclusion.file, "num_classes": manifest.exclusion.num_classes,
                              "num_samples": manifest.exclusion.num_samples}),
        "val_data": None if val_data is None else str(val_data), "people": [str(p) for p in people],
        "per_class": per_class, "class_images": int(centres.images.sum()),
        "threshold": round(chosen.value, 6), "threshold_chosen_by": chosen.chosen_by,
        "how_the_threshold_was_chosen": chosen.how, "impostor_rule": chosen.rule,
        "decision": "an identity of a set is taken for a training class when more than half of its distinct "
                    "images have cosine similarity above the threshold with the class centre",
        "sets": {a.name: _set_row(a, centres, chosen) for a in audits}, "classes_flagged": len(flagged),
        "flagged_classes": [flagged[k] for k in sorted(flagged)],
        "overlaps": overlaps, "warnings": list(warnings),
        "csv": str(csv_path), "exclusions": str(exclusions) if exclusions is not None else None,
    }


def write_csv(path: Path, report: dict) -> None:
    """One row per flagged (identity, class), its keys above the threshold joined by ';'; the header alone
    when there is none."""
    rows = [{**o, "keys": ";".join(str(k) for k in o["keys"])} for o in report["overlaps"]]
    rep.write_csv(path, rows, CSV_COLUMNS)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def exclusion_lines(report: dict, manifest: Manifest) -> list[str]:
    """The exclusion list's lines: the header, then the flagged source classes with those the shards
    already lacked, each once, sorted."""
    flagged = {f["source_class"] for f in report["flagged_classes"]}
    before = set(manifest.exclusion.classes) if manifest.exclusion is not None else set()
    for name in flagged | before:
        text = str(name)
        if text != text.strip() or not text or text.startswith("#") or "\n" in text or "\r" in text:
            raise ExclusionNameError(f"{report['shards']}: source class {text!r} cannot be written to an exclusion "
                                     f"list (one class a line, spaces around it and a leading '#' are not kept)")
    header = [
        f"# python -m evaluate overlap: {len(flagged)} training classes whose centre has cosine similarity "
        f"> {report['threshold']:.4f} with most images of a test identity",
        f"# checkpoint {_one_line(report['checkpoint'])}; shards {_one_line(report['shards'])}"
        + ("" if report["val_data"] is None else f"; val-data {_one_line(report['val_data'])}")
        + "".join(f"; people {_one_line(p)}" for p in report.get("people", [])),
    ]
    if before:
        header.append(f"# also the {len(before)} classes the shards were built without "
                      f"({_one_line(manifest.exclusion.file)}), so that this list rebuilds from the original source")
    header.append("# one source class a line (a .rec's label or an identity folder's name), for "
                  "python -m convert rec|folder SRC OUT --exclude-classes THIS_FILE")
    return header + [str(c) for c in sorted(flagged | before)]


def write_exclusions(path: Path, report: dict, manifest: Manifest) -> None:
    write_atomic(path, "\n".join(exclusion_lines(report, manifest)) + "\n")
