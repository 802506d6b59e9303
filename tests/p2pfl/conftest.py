"""Shared fixtures of the runtime's tests."""

from __future__ import annotations

import pytest
import torch

# Small models on a shared 2-core machine: a second intra-op thread only adds
# synchronisation (3-8x slower when another process competes), so tests run on one.
# Set at import, so that fixtures of any scope (a module's shared runs) see it too.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def one_thread():
    """Back to one thread after each test: a command run in-process (``p2pfl simulate``)
    sets its own count, and a later test's results must not depend on it."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)
