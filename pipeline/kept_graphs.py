"""Built DALI graphs kept for reuse within the process, by what they were built for.

Building a graph (its operators, threads and buffers) costs tens of milliseconds, and the evaluator decodes
many chunks (pipeline/decode.py; the training loader keeps its own graph for its life). A user takes a graph out while it runs it and gives
it back only once it is idle again (its input read to the end and reset), so two users never share one and a
graph left with work in flight (an error, a reader that stopped early) is simply not given back.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Hashable


class KeptGraphs:
    """Idle graphs by key, at most `keep` of them (the one given back longest ago goes first)."""

    def __init__(self, keep: int) -> None:
        self._idle: dict[Hashable, Any] = {}  # in order of giving back
        self._keep = keep
        self._lock = threading.Lock()

    def take(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The idle graph kept for `key`, or a new one from `build()`."""
        with self._lock:
            graph = self._idle.pop(key, None)
        return graph if graph is not None else build()

    def give_back(self, key: Hashable, graph: Any) -> None:
        with self._lock:
            self._idle.pop(key, None)
            while len(self._idle) >= self._keep:  # bounded: each holds a few batches of buffers
                self._idle.pop(next(iter(self._idle)))
            self._idle[key] = graph
