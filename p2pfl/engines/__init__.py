"""Simulation engines: ``protocol`` (real cores on a virtual clock), ``vectorized`` and
``processes`` (one daemon per node).

An engine's module is imported when a run asks for it: ``processes`` brings the
daemon's stack (transport, ledger, TLS), which a simulation on another engine
never needs.
"""

from __future__ import annotations

from importlib import import_module

from p2pfl.engines.common import Progress, RunResult, Setup, prepare

ENGINES = ("protocol", "vectorized", "processes")


def run_engine(name: str, setup: Setup, label: str, progress: Progress | None = None) -> RunResult:
    if name not in ENGINES:
        raise KeyError(name)
    engine = import_module(f"p2pfl.engines.{name}")
    result: RunResult = engine.run(setup, label, progress)
    return result


__all__ = ["ENGINES", "RunResult", "Setup", "prepare", "run_engine"]
