"""The rules a config key shares with a part that takes the same value as an argument: one rule, two callers.

`data.shards`, `data.weights` and `data.hw_decoder_load` are checked when the config is built
(configs/schema.py) and again by `pipeline.build_loader` and its kin, which the evaluator, the benchmarks and
`cache-teacher` call without a config.
Each rule returns what is wrong in words ("<what was expected>, found <value>"), or None; the caller names
its key or argument and raises its own error (ConfigError here, the pipeline's InputError there).
"""
from __future__ import annotations

import math
import numbers
import os
from typing import Optional, Sequence


def _finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def shards_problem(dirs: Sequence[str]) -> Optional[str]:
    """data.shards as its directories: at least one, and each once, also under another spelling of the same
    directory (a/ and ./a, or a link to it: the same samples twice are a weight of 2, data.weights)."""
    if not dirs:
        return "a directory or a non-empty list of directories, found an empty list"
    seen: dict[str, str] = {}
    for d in dirs:
        real = os.path.realpath(d)
        if real in seen:
            return (f"each directory once, found {d!r} listed twice (also as {seen[real]!r}); to show a dataset "
                    f"more often, give it a weight (data.weights) instead")
        seen[real] = d
    return None


def weights_problem(weights: Optional[Sequence[float]], datasets: int) -> Optional[str]:
    """data.weights against the `datasets` directories of data.shards: null, or one finite weight >= 0 per
    directory, not all 0."""
    if weights is None:
        return None
    found = tuple(weights)
    if len(found) != datasets:
        return f"one weight per dataset of data.shards ({datasets}), found {len(found)}: {weights!r}"
    if not all(_finite(w) and w >= 0 for w in found) or not any(w > 0 for w in found):
        return f"finite numbers >= 0, not all 0, found {weights!r}"
    return None


def hw_decoder_load_problem(value: object) -> Optional[str]:
    """data.hw_decoder_load: null (DALI's default) or the share of JPEGs for the hardware decoder, in [0, 1]."""
    if value is None or (_finite(value) and 0.0 <= value <= 1.0):
        return None
    return f"a number in [0, 1] (the share of JPEGs for the hardware decoder) or null for DALI's default, found {value!r}"
