"""The default torch thread count: the free cores, shared among this machine's processes."""

from __future__ import annotations

import os
import sys

import pytest

from p2pfl.threads import default_threads, free_threads, local_processes, usable_cores


@pytest.mark.parametrize(
    ("cores", "load", "processes", "threads"),
    [
        (2, 0.0, 1, 2),  # an idle machine: every core
        (2, 0.3, 1, 2),  # a little background noise does not cost a core
        (2, 1.0, 1, 1),  # one busy core: one thread, not two fighting over one core
        (2, 1.2, 1, 1),
        (2, 24.0, 1, 1),  # oversubscribed: still one thread
        (16, 4.0, 1, 12),
        (16, 3.6, 2, 6),  # 12 free cores shared by two ranks
        (16, 0.0, 32, 1),  # more ranks than cores: one each
        (8, -1.0, 1, 8),  # a nonsense load counts as none
    ],
)
def test_free_threads_counts_the_cores_not_busy(
    cores: int, load: float, processes: int, threads: int
) -> None:
    assert free_threads(cores, load, processes) == threads


def test_free_threads_refuses_no_cores() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        free_threads(0, 0.0)
    with pytest.raises(ValueError, match="at least 1"):
        free_threads(4, 0.0, 0)


def test_local_processes_reads_the_launchers() -> None:
    assert local_processes({}) == 1
    assert local_processes({"LOCAL_WORLD_SIZE": "4"}) == 4
    assert local_processes({"SLURM_NTASKS_PER_NODE": "3(x2)"}) == 3
    assert local_processes({"SLURM_NTASKS_PER_NODE": "2,1"}) == 2
    assert local_processes({"LOCAL_WORLD_SIZE": "zero"}) == 1


def test_usable_cores_follows_the_affinity_mask() -> None:
    cores = usable_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    if sys.platform == "linux":
        assert cores == len(os.sched_getaffinity(0))


def test_default_threads_is_within_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert default_threads({}) == usable_cores()
    monkeypatch.setattr(os, "getloadavg", lambda: (1000.0, 0.0, 0.0))
    assert default_threads({}) == 1


def test_omp_num_threads_wins_over_the_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (1000.0, 0.0, 0.0))
    assert default_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert default_threads({"OMP_NUM_THREADS": "0"}) == 1  # not a count: the guess
    assert default_threads({"OMP_NUM_THREADS": "many"}) == 1


def test_parallel_map_keeps_order_and_uses_threads_only_for_a_large_batch(monkeypatch) -> None:
    import threading

    from p2pfl import threads

    def where(i: int) -> tuple[int, str]:
        return i * i, threading.current_thread().name

    small = threads.parallel_map(where, list(range(10)))
    assert [v for v, _ in small] == [i * i for i in range(10)]
    assert {name for _, name in small} == {threading.current_thread().name}
    monkeypatch.setattr(threads, "free_cores", lambda: 2)
    large = threads.parallel_map(where, list(range(4 * threads.PARALLEL_BATCH)))
    assert [v for v, _ in large] == [i * i for i in range(4 * threads.PARALLEL_BATCH)]
    assert all(name.startswith("p2pfl-check") for _, name in large)
    monkeypatch.setattr(threads, "free_cores", lambda: 1)  # one free core: no pool
    alone = threads.parallel_map(where, list(range(4 * threads.PARALLEL_BATCH)))
    assert {name for _, name in alone} == {threading.current_thread().name}
