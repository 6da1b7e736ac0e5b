"""The stage registry: `@register("name")` on a stage's `run(settings, data) -> list[Result]`."""
from __future__ import annotations

from typing import Callable, Dict, List

STAGES: Dict[str, Callable] = {}
ORDER = ("convert", "read", "decode", "pipeline", "step")  # data-flow order, the order they run in


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
