"""Which evaluation sets exist under the data roots, and running them for one model.

Every failure a user can act on is an InputError naming the path: a root that is no folder, a target
asked for whose data is missing, none at all to run, or a set's file that is not what it should be
(common.safe_pickle.DataFileError, naming the file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from common.errors import InputError
from common.safe_pickle import DataFileError
from evaluate import tinyface, verification
from evaluate.ijb import protocol as ijb_protocol
from evaluate.ijb import run as ijb_run

TINYFACE_FOLDERS = ("tinyface_aligned_pad_0.1",)
ALL_TARGETS = (*verification.STANDARD_SETS, *ijb_protocol.TARGETS, "tinyface")


class MissingDataError(InputError, FileNotFoundError):
    """A data root that is no folder, a target asked for by name without data under its root, or no target
    with data at all."""


class UnknownTargetError(InputError, ValueError):
    """A target name that is neither a known benchmark nor a set found under --val-data."""


@dataclass(frozen=True)
class DataRoots:
    val_data: Optional[Path] = None
    ijb_root: Optional[Path] = None
    tinyface_root: Optional[Path] = None

    def __post_init__(self):
        # Checked here, before any work: a root that does not exist would otherwise only skip its targets.
        for flag, path in (("--val-data", self.val_data), ("--ijb-root", self.ijb_root),
                           ("--tinyface-root", self.tinyface_root)):
            if path is not None and not Path(path).is_dir():
                why = "is not a directory" if Path(path).exists() else "does not exist"
                raise MissingDataError(f"{path}: {flag} {why}")


def kind(target: str) -> str:
    if target in ijb_protocol.TARGETS:
        return "ijb"
    if target == "tinyface":
        return "tinyface"
    return "verification"


def locate(target: str, roots: DataRoots) -> tuple[Optional[Path], str]:
    """(path, "") when the target's data exists, else (None, why not)."""
    k = kind(target)
    if k == "verification":
        if roots.val_data is None:
            return None, "no --val-data given"
        for p in (roots.val_data / f"{target}.bin", roots.val_data / target):
            if p.is_file() or (p.is_dir() and any(p.glob("*.arrow"))):
                return p, ""
        return None, f"neither {roots.val_data / (target + '.bin')} nor an arrow folder {roots.val_data / target}"
    if k == "ijb":
        if roots.ijb_root is None:
            return None, "no --ijb-root given"
        found = ijb_protocol.find(roots.ijb_root, target)
        return (found, "") if found else (None, f"no {target}_gt_aligned/metadata.pt or {target}/meta under {roots.ijb_root}")
    if roots.tinyface_root is None:
        return None, "no --tinyface-root given"
    for p in (*(roots.tinyface_root / n for n in TINYFACE_FOLDERS), roots.tinyface_root):
        if (p / "metadata.pt").is_file():
            return p, ""
    return None, f"no {TINYFACE_FOLDERS[0]}/metadata.pt under {roots.tinyface_root}"


def extra_sets(roots: DataRoots) -> tuple[str, ...]:
    """Verification sets under --val-data beyond the standard names (`NAME.bin`, or an arrow folder
    NAME/): a user's own pairs, or the demo's synthetic held-out identities."""
    if roots.val_data is None or not roots.val_data.is_dir():
        return ()
    found = {p.stem for p in roots.val_data.glob("*.bin") if p.is_file()}
    found |= {p.name for p in roots.val_data.iterdir() if p.is_dir() and any(p.glob("*.arrow"))}
    return tuple(sorted(found - set(ALL_TARGETS)))


def plan(targets: Sequence[str], roots: DataRoots, *, explicit: bool) -> tuple[dict, dict]:
    """({target: path} to run, {target: reason} skipped). An explicitly named missing target raises."""
    if not explicit:
        targets = (*targets, *extra_sets(roots))
    unknown = [t for t in targets if t not in ALL_TARGETS and t not in extra_sets(roots)]
    if unknown:
        raise UnknownTargetError(f"unknown targets {unknown}; known: {', '.join(ALL_TARGETS + extra_sets(roots))}")
    run, skipped = {}, {}
    for t in targets:
        path, why = locate(t, roots)
        if path is None:
            if explicit:
                raise MissingDataError(f"target {t} was asked for but its data is missing: {why}")
            skipped[t] = why
        else:
            run[t] = path
    return run, skipped


def require_some(run: dict, roots: DataRoots) -> None:
    """Raise when a plan runs nothing: a report of skipped targets alone is no evaluation."""
    if not run:
        given = [str(p) for p in (roots.val_data, roots.ijb_root, roots.tinyface_root) if p is not None]
        raise MissingDataError(f"{', '.join(given) or 'no data root given'}: nothing to evaluate, no target "
                               f"has data here (give --val-data, --ijb-root or --tinyface-root)")


def run_target(model, target: str, path: Path, *, device=None, batch_size: int = 256, progress: bool = True) -> dict:
    """The target's report. A set whose contents the metrics cannot use (too few pairs for the folds, a
    template without images, no mated probe) raises DataFileError naming `path`."""
    try:
        return _run(model, target, path, device=device, batch_size=batch_size, progress=progress)
    except InputError:
        raise
    except ValueError as err:  # the metrics check their inputs, which here come from the set's files
        raise DataFileError(f"{path}: {target}: {err}") from err


def _run(model, target: str, path: Path, *, device, batch_size: int, progress: bool) -> dict:
    k = kind(target)
    if k == "verification":
        return verification.test(model, verification.load_set(path), device=device, batch_size=batch_size,
                                 progress=progress)
    if k == "ijb":
        return ijb_run.run(model, ijb_protocol.load(path, target), device=device, batch_size=batch_size, progress=progress)
    return tinyface.run(model, tinyface.load_tinyface(path), device=device, batch_size=batch_size, progress=progress)
