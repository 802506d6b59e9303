"""How many torch threads a simulation uses when ``--threads`` does not say; threads for checks.

torch's own default is one intra-op thread per core. When other processes compete
for those cores, its threads wait on each other at every parallel region, and a run
is slower than with one thread. So the default counts only the cores that are free:
the cores this process may run on (its affinity mask, which a batch scheduler or
``taskset`` narrows), less the one-minute load average (the processes already
running or waiting for a core), shared among the processes of this job on this
machine (``LOCAL_WORLD_SIZE`` under torchrun, ``SLURM_NTASKS_PER_NODE`` under
srun), and never fewer than one. A thread count set in ``OMP_NUM_THREADS`` (which
torch's own default also obeys) wins over the guess.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def free_threads(cores: int, load: float, processes: int = 1) -> int:
    """Threads for one of ``processes`` on ``cores`` cores with ``load`` already running.

    The free cores are ``cores - load`` rounded to the nearest whole core; each process
    gets an equal share of them, at least one thread.
    """
    if cores < 1 or processes < 1:
        raise ValueError("cores and processes must be at least 1")
    free = math.floor(cores - max(0.0, load) + 0.5)
    return max(1, min(cores, free) // processes)


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask where the OS has one."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity masks here (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def local_processes(environ: Mapping[str, str]) -> int:
    """Processes of this job on this machine, as the launcher's environment says (else 1)."""
    for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = environ.get(key, "")
        head = value.split("(")[0].split(",")[0]  # slurm may write "4(x2)" or "4,2"
        if head.isdigit() and int(head) >= 1:
            return int(head)
    return 1


def default_threads(environ: Mapping[str, str] | None = None) -> int:
    """The thread count for this process now: ``OMP_NUM_THREADS`` where it is a count,
    else from the free cores (see the module)."""
    env = os.environ if environ is None else environ
    told = env.get("OMP_NUM_THREADS", "").strip()
    if told.isdigit() and int(told) >= 1:
        return int(told)
    return free_threads(usable_cores(), _load(), local_processes(env))


def free_cores() -> int:
    """The cores free to this busy process now, at least one: the usable cores less the
    load average, less one for this process's own thread, which the load counts."""
    return free_threads(usable_cores(), max(0.0, _load() - 1.0))


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average here (Windows), or unreadable
        return 0.0


PARALLEL_BATCH = 64
"""Fewer checks than this run in the caller's thread: a pool would cost more than it saves."""


def parallel_map(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """``list(map(fn, items))``, on a thread per free core for a large batch.

    For work that releases the GIL (libsodium's signature checks: a ledger's whole
    view judged at once, ``protocols.ledger_rules.check_signatures``). Threads on
    cores that other processes keep busy only wait on each other, so only free
    cores count (``free_cores``). The pool lives for the call only, so nothing
    keeps threads between views.
    """
    workers = min(free_cores(), len(items) // PARALLEL_BATCH)
    if workers < 2:
        return list(map(fn, items))
    size = -(-len(items) // workers)  # one slice a thread: a future per item costs more
    slices = [items[i : i + size] for i in range(0, len(items), size)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="p2pfl-check") as pool:
        done = pool.map(lambda part: [fn(item) for item in part], slices)
        return [result for part in done for result in part]
