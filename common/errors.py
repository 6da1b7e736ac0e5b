"""The one way every command reports an expected failure: one line, `<prog>: error: <file>: <what>`, exit 2.

An expected failure is bad input (a corrupt file, a wrong setting, a missing folder) or a refused action
(an output another job holds): its message already names the file, the position and what was found,
so a traceback would only hide it. Every package's error classes for such failures derive from
`InputError`; `run_command` turns them (and the extra classes a command names, such as
configs.ConfigError) into that one line and exit status 2. Anything else is a bug and keeps its
traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional

EXIT_ERROR = 2          # as argparse exits for a bad command line
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


class InputError(Exception):
    """An expected failure whose message names the file (or setting) and what is wrong with it."""


def run_command(prog: str, main: Callable[[], Optional[int]], *, known: tuple = (),
                interrupted: str = "interrupted") -> int:
    """`main()`'s exit status (0 unless it returns an int); an InputError or one of `known` printed as one line on stderr
    with status 2; Ctrl-C as `interrupted` with status 130. Under torchrun, ranks other than 0 prefix
    their rank, so that a failure on one rank is told apart from the same failure on all."""
    try:
        status = main()
    except (InputError, *known) as error:
        print(f"{_rank_prefix()}{prog}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def _rank_prefix() -> str:
    rank = os.environ.get("RANK")
    return f"[rank {rank}] " if rank not in (None, "0") else ""
