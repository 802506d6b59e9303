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


@pytest.fixture
def delivered(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every message the protocol engine delivers during the test, as bytes, in order."""
    from p2pfl.engines import protocol as protocol_engine

    messages: list[bytes] = []
    deliver = protocol_engine._Run._on_deliver

    def record(self: object, now: float, payload: tuple[str, str, int, bytes]) -> None:
        messages.append(payload[-1])  # (sender, receiver, epoch, frame)
        deliver(self, now, payload)  # type: ignore[arg-type]

    monkeypatch.setattr(protocol_engine._Run, "_on_deliver", record)
    return messages


@pytest.fixture
def hospitals():  # type: ignore[no-untyped-def]
    """A maker of small hospitals scenarios: 3 rounds, no baselines, no DP, no sweep."""
    import dataclasses
    from pathlib import Path

    from p2pfl.scenario import load_scenario

    path = Path(__file__).resolve().parents[2] / "simulations" / "hospitals.toml"
    base = {
        "training.rounds": 3,
        "baselines.pooled": False,
        "baselines.local": False,
        "privacy.mechanism": "none",
        "privacy.epsilon": None,
        "privacy.clip": None,
    }

    def make(**overrides: object) -> object:
        return dataclasses.replace(load_scenario(path, {**base, **overrides}), sweep={})

    return make
