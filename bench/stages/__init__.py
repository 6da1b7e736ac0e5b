"""The benchmark's stages, in data-flow order; each measures the project's public functions against a baseline.

`STAGES[name](settings, data) -> list[harness.Result]`. Importing a stage module registers it.
"""
from bench.stages.registry import STAGES, stage_names
from bench.stages import convert, read, decode, loader, step  # noqa: F401,E402  (registration)

__all__ = ["STAGES", "stage_names"]
