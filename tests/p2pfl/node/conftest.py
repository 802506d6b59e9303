"""Fixtures of the node's tests: one finished three-node run (``memory_federation``)."""

from __future__ import annotations

import pytest
from memory_federation import ROUNDS, Run, memory_federation, run_peers


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Three nodes, ``ROUNDS`` rounds, run to the end once (read it, never change it)."""
    return run_peers(memory_federation(tmp_path_factory.mktemp("three"), ROUNDS))
