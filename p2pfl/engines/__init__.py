"""Simulation engines: ``protocol`` (real cores on a virtual clock) and ``vectorized``."""

from __future__ import annotations

from p2pfl.engines import processes, protocol, vectorized
from p2pfl.engines.common import Progress, RunResult, Setup, prepare

ENGINES = {"protocol": protocol.run, "vectorized": vectorized.run, "processes": processes.run}


def run_engine(name: str, setup: Setup, label: str, progress: Progress | None = None) -> RunResult:
    return ENGINES[name](setup, label, progress)


__all__ = ["ENGINES", "RunResult", "Setup", "prepare", "run_engine"]
