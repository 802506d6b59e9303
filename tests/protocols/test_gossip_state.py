"""A core's state across rounds (``export_state`` / ``import_state``): a restart loses nothing.

Each test runs a small network twice, once straight through and once with
every core replaced after a round by a fresh one that imports the old one's
state, stored as flat float32 arrays as a checkpoint stores them; the models
must come out equal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from protocols.compression import QuantizeCompressor, TopKCompressor
from protocols.errors import LocalProtocolError
from protocols.gossip import (
    ChocoGossip,
    CoreState,
    GossipCore,
    Neighbourhood,
    PushSumGossip,
    RoundMixed,
    SyncGossip,
)

NAMES = ("a", "b", "c")
DIM = 6


def hood(me: str) -> Callable[[int], Neighbourhood]:
    others = {p: 1 / 3 for p in NAMES if p != me}
    return lambda _round: Neighbourhood(1 / 3, others, others)


def choco(compressor: Any) -> Callable[[str], GossipCore]:
    return lambda me: ChocoGossip(
        me, hood(me), compressor=compressor, gamma=0.5, seed=NAMES.index(me)
    )


def push_sum(me: str) -> GossipCore:
    return PushSumGossip(me, hood(me), dtype=np.float32)


def through_store(state: CoreState) -> CoreState:
    """What a checkpoint keeps: each array flat, as float32."""
    return {k: np.asarray(v, dtype=np.float32).ravel().copy() for k, v in state.items()}


def train(models: dict[str, np.ndarray], r: int) -> None:
    """A deterministic stand-in for local steps: pull each model towards its own target."""
    for i, name in enumerate(NAMES):
        target = np.arange(DIM, dtype=np.float32) * (i + 1) + r
        models[name] += np.float32(0.3) * (target - models[name])


def one_round(cores: dict[str, GossipCore], models: dict[str, np.ndarray], r: int) -> None:
    train(models, r)
    inbox = []
    for name, core in cores.items():
        out = core.start_round(r, models[name].copy(), 0.0)
        inbox.extend((peer, name, message) for peer, message in out.sends)
        for event in out.events:
            if isinstance(event, RoundMixed):
                models[name] = np.array(event.model, dtype=np.float32)
    for peer, sender, message in inbox:
        for event in cores[peer].receive(sender, message, 0.0).events:
            if isinstance(event, RoundMixed):
                models[peer] = np.array(event.model, dtype=np.float32)


def run(make: Callable[[str], GossipCore], rounds: int, restart_after: int | None) -> Any:
    rng = np.random.default_rng(7)
    models = {n: rng.standard_normal(DIM).astype(np.float32) for n in NAMES}
    cores = {n: make(n) for n in NAMES}
    for r in range(rounds):
        one_round(cores, models, r)
        if r == restart_after:
            states = {n: through_store(core.export_state()) for n, core in cores.items()}
            cores = {n: make(n) for n in NAMES}
            for n, core in cores.items():
                core.import_state(states[n])
                core.resume_at(r + 1)
    return models, cores


@pytest.mark.parametrize(
    "make",
    [choco(QuantizeCompressor(bits=4)), choco(TopKCompressor(fraction=0.5))],
    ids=["quantize", "topk"],
)
def test_a_choco_restart_keeps_the_public_copies(make: Callable[[str], GossipCore]) -> None:
    straight, _ = run(make, 5, None)
    restarted, _ = run(make, 5, 1)
    for name in NAMES:
        np.testing.assert_array_equal(restarted[name], straight[name])
    # Without the state the copies start from zero again and the run departs.
    rng = np.random.default_rng(7)
    models = {n: rng.standard_normal(DIM).astype(np.float32) for n in NAMES}
    cores = {n: make(n) for n in NAMES}
    for r in range(5):
        one_round(cores, models, r)
        if r == 1:
            cores = {n: make(n) for n in NAMES}
            for core in cores.values():
                core.resume_at(2)
    assert any(not np.allclose(models[n], straight[n]) for n in NAMES)


def test_a_push_sum_restart_keeps_the_mass() -> None:
    straight, cores = run(push_sum, 5, None)
    restarted, again = run(push_sum, 5, 2)
    for name in NAMES:
        np.testing.assert_allclose(restarted[name], straight[name], rtol=1e-6)
        a, b = cores[name], again[name]
        assert isinstance(a, PushSumGossip) and isinstance(b, PushSumGossip)
        assert b.weight == pytest.approx(a.weight, rel=1e-12)
    total = sum(c.weight for c in again.values() if isinstance(c, PushSumGossip))
    assert total == pytest.approx(len(NAMES), rel=1e-12)  # the weights' mass survived float32


def test_choco_state_names_its_parts_and_refuses_what_does_not_fit() -> None:
    _, cores = run(choco(QuantizeCompressor(bits=4)), 2, None)
    state = cores["a"].export_state()
    assert set(state) == {"own", "copy:b", "copy:c"}
    fresh = choco(QuantizeCompressor(bits=4))("a")
    with pytest.raises(LocalProtocolError, match="unknown entry"):
        fresh.import_state({**state, "momentum": np.zeros(DIM)})
    with pytest.raises(LocalProtocolError, match="does not match"):
        fresh.import_state({**state, "copy:b": np.zeros(DIM + 1)})
    with pytest.raises(LocalProtocolError, match="no own copy"):
        fresh.import_state({"copy:b": np.zeros(DIM)})


def test_choco_state_keeps_the_rounds_owed_to_a_straggler() -> None:
    cores = {n: choco(QuantizeCompressor(bits=4))(n) for n in NAMES}
    cores["a"] = ChocoGossip("a", hood("a"), round_timeout=1.0)
    out = {n: c.start_round(0, np.ones(DIM, np.float32), 0.0) for n, c in cores.items()}
    late = next(m for peer, m in out["c"].sends if peer == "a")
    for peer, message in out["b"].sends:
        if peer == "a":
            cores["a"].receive("b", message, 0.5)
    cores["a"].poll(1.0)  # closes round 0 without c
    state = through_store(cores["a"].export_state())
    assert set(state) == {"own", "copy:b", "copy:c", "owed:c"}
    restored = ChocoGossip("a", hood("a"), round_timeout=1.0)
    restored.import_state(state)
    restored.resume_at(1)
    (event,) = restored.receive("c", late, 2.0).events
    assert event.applied  # c's late message still reaches its copy after the restart


def test_state_moves_only_between_rounds_and_sync_carries_none() -> None:
    sync = SyncGossip("a", hood("a"))
    assert sync.export_state() == {}
    with pytest.raises(LocalProtocolError, match="carries no state"):
        sync.import_state({"own": np.zeros(DIM)})
    core = choco(QuantizeCompressor(bits=4))("a")
    assert core.export_state() == {}
    core.start_round(0, np.ones(DIM, np.float32), 0.0)
    with pytest.raises(LocalProtocolError, match="round 0 is open"):
        core.export_state()
    ps = PushSumGossip("a", hood("a"))
    with pytest.raises(LocalProtocolError, match="x and weight"):
        ps.import_state({"x": np.zeros(DIM)})
    with pytest.raises(LocalProtocolError, match="positive"):
        ps.import_state({"x": np.zeros(DIM), "weight": np.zeros(2)})


def test_a_replayed_push_sum_share_is_not_absorbed_twice_even_after_a_restart() -> None:
    a, b = push_sum("a"), push_sum("b")
    share = next(
        m for peer, m in b.start_round(0, np.ones(DIM, np.float32), 0.0).sends if peer == "a"
    )
    a.start_round(0, np.zeros(DIM, np.float32), 0.0)
    a.receive("b", share, 0.0)
    weight = a.weight
    (event,) = a.receive("b", share, 0.0).events
    assert not event.applied and a.weight == weight and a.absorbed("b") == {0}
    restored = push_sum("a")
    restored.import_state(through_store(a.export_state()))
    assert restored.receive("b", share, 0.0).events and restored.weight == pytest.approx(weight)
