"""Worker processes of the conversion passes and the synthetic renderer: when they pay off, and how they start.

Workers are spawned, never forked: the parent may run threads (tqdm's monitor; torch, DALI or OpenMP
threads in a caller such as the benchmark), and forking a threaded process is unsafe. What every task
needs (the source, a progress counter) reaches each worker once, through the pool's initializer, rather
than with every task.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.pool
from typing import Callable, Optional

# Below this many images, starting worker processes (spawn: about a second) costs more than it saves.
MIN_PARALLEL_IMAGES = 2048

_SPAWN = multiprocessing.get_context("spawn")


def worth_spawning(workers: int, tasks: int, images: int, min_images: Optional[int] = None) -> bool:
    """Whether `tasks` tasks over `images` images should run in `workers` processes rather than in this one
    (`min_images`, default MIN_PARALLEL_IMAGES: below it, starting the processes costs more than they save)."""
    return workers > 1 and tasks >= 2 and images >= (MIN_PARALLEL_IMAGES if min_images is None else min_images)


def spawn_pool(processes: int, initializer: Optional[Callable[..., None]] = None,
               initargs: tuple = ()) -> multiprocessing.pool.Pool:
    """A pool of `processes` spawned workers; each runs `initializer(*initargs)` once as it starts."""
    return _SPAWN.Pool(processes, initializer=initializer, initargs=initargs)


def shared_counter():
    """An int64 that spawn_pool's workers add to (under its lock) and the parent reads: progress across processes."""
    return _SPAWN.Value("q", 0)
