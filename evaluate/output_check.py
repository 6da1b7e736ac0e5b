"""Where a command will write, checked before its work: a folder that takes a write, a file that is no folder."""

from __future__ import annotations

import tempfile
from pathlib import Path

from common.files import WriteError


def writable_folder(folder: Path, what: str) -> None:
    """Create `folder` if missing and write a file there: a report that cannot be written fails now, not
    after the evaluation. Only a write tells (os.access says yes to root whatever the mode bits)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test."):
            pass
    except OSError as err:
        raise WriteError(f"{folder}: cannot write {what} here ({err.strerror or err}); choose another "
                         f"place or fix the permissions") from None


def check_output(path: Path, what: str = "the report", example: str = "report.json") -> None:
    if path.is_dir():
        raise WriteError(f"{path}: {what} would replace this directory; give a file name such as "
                         f"{path / example}")
    writable_folder(path.parent, what)


def check_report_with_csv(path: Path, example: str = "report.json") -> None:
    """check_output for a JSON report whose CSV goes beside it (path.with_suffix(".csv")): a report named .csv
    would be replaced by its own CSV."""
    if path.suffix == ".csv":
        raise WriteError(f"{path}: the CSV beside the report would replace it; name the report .json")
    check_output(path, "the report", example)
