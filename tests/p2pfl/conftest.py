"""Shared fixtures of the runtime's tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Small models on a shared 2-core machine: a second intra-op thread only adds
    synchronisation (3-8x slower when another process competes), so tests run on one.
    Per test: a command run in-process (``p2pfl simulate``) sets its own count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
