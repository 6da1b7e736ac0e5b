"""The overlap audit's outputs: the JSON report, a CSV of its suspected overlaps, and the exclusion list.

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

CSV_COLUMNS = ("target", "image", "pair", "train_class", "source_class", "similarity")


class ExclusionNameError(InputError, ValueError):
    """A source class name that an exclusion list cannot hold (a line of its own, read back the same)."""


def source_class(manifest: Manifest, train_class: int):
    """The source's label (a .rec's number or an identity folder's name) of contiguous class `train_class`."""
    return manifest.class_map[train_class] if manifest.class_map is not None else int(train_class)


def build(*, checkpoint: dict, shards: Path, manifest: Manifest, val_data: Path, per_class: int,
          centres: ClassCentres, chosen: Threshold, audits: Sequence[SetAudit], warnings: Sequence[str],
          device: str, csv_path: Path, exclusions: Optional[Path]) -> dict:
    """The report: what was compared, the threshold and how it was chosen, counts per set, the flagged
    classes and every suspected overlap (target, image, pair, train_class, source_class, similarity)."""
    overlaps, flagged = [], {}
    for a in audits:
        for m in a.matches:
            overlaps.append({"target": m.target, "image": m.image, "pair": m.image // 2, "train_class": m.train_class,
                             "source_class": source_class(manifest, m.train_class),
                             "similarity": round(m.similarity, 6)})
            f = flagged.setdefault(m.train_class, {"train_class": m.train_class,
                                                   "source_class": source_class(manifest, m.train_class),
                                                   "targets": [], "images": 0, "max_similarity": -1.0})
            if m.target not in f["targets"]:
                f["targets"].append(m.target)
            f["images"] += 1
            f["max_similarity"] = max(f["max_similarity"], round(m.similarity, 6))
    sets = {a.name: {"path": a.source, "images": a.images, "pairs": a.stats.same + a.stats.different,
                     "same_pairs": a.stats.same, "different_pairs": a.stats.different,
                     "mean_same_similarity": a.stats.mean_same,
                     "different_similarity_p99_9": a.stats.impostor_quantile,
                     "different_similarity_sd": a.stats.impostor_sd,
                     "comparisons": a.images * len(centres.images),
                     "expected_by_chance": by_chance(chosen, len(centres.images), a.images),
                     "overlaps": len(a.matches), "images_flagged": a.flagged_images,
                     "classes_flagged": len(a.flagged_classes)} for a in audits}
    return {
        **checkpoint, "device": device,
        "shards": str(shards), "num_classes": manifest.num_classes, "num_samples": manifest.num_samples,
        "shards_exclusion": (None if manifest.exclusion is None else
                             {"file": manifest.exclusion.file, "num_classes": manifest.exclusion.num_classes,
                              "num_samples": manifest.exclusion.num_samples}),
        "val_data": str(val_data), "per_class": per_class, "class_images": int(centres.images.sum()),
        "threshold": round(chosen.value, 6), "threshold_chosen_by": chosen.chosen_by,
        "how_the_threshold_was_chosen": chosen.how, "impostor_rule": chosen.rule,
        "sets": sets, "classes_flagged": len(flagged),
        "flagged_classes": [flagged[k] for k in sorted(flagged)],
        "overlaps": overlaps, "warnings": list(warnings),
        "csv": str(csv_path), "exclusions": str(exclusions) if exclusions is not None else None,
    }


def write_csv(path: Path, report: dict) -> None:
    """One row per suspected overlap; the header alone when there is none."""
    rep.write_csv(path, report["overlaps"], CSV_COLUMNS)


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
        f"> {report['threshold']:.4f} with a verification image",
        f"# checkpoint {_one_line(report['checkpoint'])}; shards {_one_line(report['shards'])}; "
        f"val-data {_one_line(report['val_data'])}",
    ]
    if before:
        header.append(f"# also the {len(before)} classes the shards were built without "
                      f"({_one_line(manifest.exclusion.file)}), so that this list rebuilds from the original source")
    header.append("# one source class a line (a .rec's label or an identity folder's name), for "
                  "python -m convert rec|folder SRC OUT --exclude-classes THIS_FILE")
    return header + [str(c) for c in sorted(flagged | before)]


def write_exclusions(path: Path, report: dict, manifest: Manifest) -> None:
    write_atomic(path, "\n".join(exclusion_lines(report, manifest)) + "\n")
