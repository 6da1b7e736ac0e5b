"""The stage registry: `@register("name")` on a stage's `run(settings, data) -> list[Result]`."""
from __future__ import annotations

from typing import Callable, Dict, List

STAGES: Dict[str, Callable] = {}
ORDER = ("convert", "read", "decode", "pipeline", "step", "growth")  # data-flow order, the order they run in
# Run only when --stages names them: minutes of work and gigabytes of their own data, not the shared set.
ON_REQUEST = ("growth",)


def register(name: str) -> Callable[[Callable], Callable]:
    if name not in ORDER:
        raise ValueError(f"bench stage {name!r}: not one of {ORDER}")

    def decorate(run: Callable) -> Callable:
        if name in STAGES:
            raise ValueError(f"bench stage {name!r} is registered twice ({STAGES[name].__module__}, {run.__module__})")
        STAGES[name] = run
        return run

    return decorate


def stage_names() -> List[str]:
    """Registered stages in data-flow order."""
    return [name for name in ORDER if name in STAGES]


def default_stages() -> List[str]:
    """The stages a run without --stages runs: all but those ON_REQUEST."""
    return [name for name in stage_names() if name not in ON_REQUEST]


def needs_shared_data(stages: List[str]) -> bool:
    """Whether any of `stages` measures on the benchmark's shared data set (the ON_REQUEST ones write their own)."""
    return any(name not in ON_REQUEST for name in stages)
