"""The one error a teacher that cannot be loaded raises (so a run never trains on a random teacher)."""
from __future__ import annotations


class TeacherLoadError(RuntimeError):
    """A teacher spec that could not be turned into a frozen module.

    The message names the spec, the file and what went wrong, and ends with a hint.
    """
