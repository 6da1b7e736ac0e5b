"""Stopping a run cleanly when the cluster asks: SIGTERM, SIGUSR1 or SIGINT mark a stop request, which the
ranks agree on at the next step boundary (train_step ORs it into the health flag's all-reduce it does
anyway: no extra collective), then the loop writes one checkpoint and exits with EXIT_PREEMPTED.

A second SIGINT aborts at once (KeyboardInterrupt, exit 130), as Ctrl-C twice should. Handlers are
installed by `handle_signals()` for the run's lifetime and the previous ones put back after; outside
it (a benchmark calling train_step) nothing is ever requested.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

# sysexits.h EX_TEMPFAIL, "a temporary failure; the user is invited to retry": the run stopped at a
# checkpoint on request and the same command resumes it (a job script requeues on it).
EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

_requested: dict = {"signal": None}


def requested() -> bool:
    """Whether this process has been asked to stop (read once a step by train_step)."""
    return _requested["signal"] is not None


def signal_name() -> str:
    sig = _requested["signal"]
    return signal.Signals(sig).name if sig is not None else ""


def _handler(signum, frame) -> None:
    if signum == signal.SIGINT and _requested["signal"] is not None:
        raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
    _requested["signal"] = signum


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Within the block, SIGTERM, SIGUSR1 and SIGINT request a stop at the next step boundary. Only the
    main thread can install handlers; elsewhere (a run started from a thread) the block changes nothing."""
    _requested["signal"] = None
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _requested["signal"] = None
