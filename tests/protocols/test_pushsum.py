"""Push-sum over column-stochastic weights: mass conserved in flight, models reach the average."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gossip_harness import (
    Harness,
    column_stochastic_weights,
    data_chooser,
    directed_ring_graph,
    exponential_graph,
    pushsum_cores,
    pushsum_mass,
    rng_chooser,
    run_pushsum,
    schedule,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import LocalProtocolError, PeerProtocolError
from protocols.gossip import Phase, PushSumGossip, RoundMixed
from protocols.wire import GossipMessage, decode, dense

FAST = settings(max_examples=30, deadline=None)

seeds = st.integers(0, 2**32 - 1)
sizes = st.integers(2, 7)


def static(n: int, seed: int) -> list[np.ndarray]:
    return [column_stochastic_weights(directed_ring_graph(n, np.random.default_rng(seed)))]


def one_peer_exponential(n: int, seed: int) -> list[np.ndarray]:
    """At step t node i sends half its mass to i + 2^(t mod log n): time-varying, one peer each."""
    hops = max(1, (n - 1).bit_length())
    return [column_stochastic_weights(exponential_graph(n, hops=[k])) for k in range(hops)]


def random_directed(n: int, seed: int) -> list[np.ndarray]:
    """A different random strongly connected digraph at each of five steps."""
    rng = np.random.default_rng(seed)
    return [column_stochastic_weights(directed_ring_graph(n, rng, p=0.3)) for _ in range(5)]


TOPOLOGIES = {"static": static, "exponential": one_peer_exponential, "varying": random_directed}


def models(n: int, seed: int, dim: int = 4) -> np.ndarray:
    return np.random.default_rng(seed + 7).standard_normal((n, dim))


def test_weights_are_column_stochastic() -> None:
    for make in TOPOLOGIES.values():
        for w in make(6, 3):
            assert np.allclose(w.sum(axis=0), 1.0) and np.all(w >= 0)


def conservation_check(h: Harness, x: np.ndarray) -> Any:
    """Held plus in-flight mass equals the mass the started nodes brought in, after every call."""

    def check() -> None:
        total, weight = pushsum_mass(h)
        started = [i for i, core in enumerate(h.cores) if core.next_round > 0]
        assert np.allclose(total, x[started].sum(axis=0), rtol=0, atol=1e-9)
        assert abs(weight - len(h.cores)) <= 1e-9

    return check


@FAST
@given(sizes, seeds, st.sampled_from(sorted(TOPOLOGIES)), st.integers(0, 4), st.data())
def test_mass_is_conserved_with_delays_and_any_order(
    n: int, seed: int, topology: str, max_delay: int, data: st.DataObject
) -> None:
    x = models(n, seed)
    delays = np.random.default_rng(seed + 1)
    h = Harness(
        pushsum_cores(TOPOLOGIES[topology](n, seed)),
        data_chooser(data),
        delay=lambda: float(delays.integers(0, max_delay + 1)),
    )
    check = conservation_check(h, x)
    run_pushsum(h, list(x), steps=6, observe=check)
    h.flush()
    check()


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
@pytest.mark.parametrize("seed", [0, 1])
def test_models_converge_to_the_initial_average(topology: str, seed: int) -> None:
    n = 7
    x = models(n, seed)
    rng = np.random.default_rng(seed)
    h = Harness(
        pushsum_cores(TOPOLOGIES[topology](n, seed)),
        rng_chooser(rng),
        delay=lambda: float(rng.integers(0, 5)),
    )
    check = conservation_check(h, x)
    current = run_pushsum(h, list(x), steps=40)
    check()
    h.flush()
    check()
    h.delay = lambda: 0.0
    current = run_pushsum(h, current, steps=60)
    h.flush()
    check()
    for core in h.cores:
        assert np.allclose(core.model(), x.mean(axis=0), rtol=0, atol=1e-6)
    assert np.allclose(current, x.mean(axis=0), atol=1e-6)


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
def test_models_approach_the_average_while_frames_are_still_delayed(topology: str) -> None:
    n = 6
    x = models(n, 4)
    rng = np.random.default_rng(4)
    h = Harness(
        pushsum_cores(TOPOLOGIES[topology](n, 4)),
        rng_chooser(rng),
        delay=lambda: float(rng.integers(0, 4)),
    )
    run_pushsum(h, list(x), steps=100)
    h.flush()
    spread = np.array([core.model() for core in h.cores]) - x.mean(axis=0)
    assert np.abs(spread).max() <= 1e-3 * np.abs(x - x.mean(axis=0)).max()


# --- one node at a time ---------------------------------------------------------------------


PAIR = np.array([[0.5, 0.5], [0.5, 0.5]])


def test_a_step_keeps_and_sends_the_shares() -> None:
    w = np.array([[0.5, 0.0, 0.5], [0.25, 0.5, 0.0], [0.25, 0.5, 0.5]])
    core = PushSumGossip("0", schedule([w], 0))
    assert core.phase is Phase.IDLE and core.deadline is None
    out = core.start_round(0, np.array([4.0, 8.0]), now=0.0)
    sends = dict(out.sends)
    assert sorted(sends) == ["1", "2"]
    for peer in ("1", "2"):
        assert sends[peer].sender == "0" and sends[peer].round == 0
        assert sends[peer].weight == 0.25
        assert sends[peer].payload.values.dtype == np.float64
        assert np.array_equal(sends[peer].payload.values, [1.0, 2.0])
    assert np.array_equal(core.numerator, [2.0, 4.0]) and core.weight == 0.5
    (mixed,) = out.events
    assert isinstance(mixed, RoundMixed) and mixed.round == 0
    assert np.array_equal(mixed.model, [4.0, 8.0]) and mixed.model.dtype == np.float32
    assert core.next_round == 1 and core.poll(1e9).events == ()


def test_mass_that_arrives_before_the_first_step_is_kept() -> None:
    core = PushSumGossip("1", schedule([PAIR], 1))
    with pytest.raises(LocalProtocolError):
        core.model()
    core.receive("0", GossipMessage("0", 0, dense(np.array([3.0, 1.0])), 0.5), now=0.0)
    assert np.array_equal(core.numerator, [3.0, 1.0]) and core.weight == 1.5
    assert np.allclose(core.model(), [2.0, 2 / 3])
    out = core.start_round(0, np.array([1.0, 1.0]), now=0.0)
    (_, sent), *_ = out.sends
    # after the step: x = ([3, 1] + [1, 1]) / 2 held and sent, w = 1.5 / 2 each
    assert np.array_equal(core.numerator, [2.0, 1.0]) and core.weight == 0.75
    assert np.array_equal(sent.payload.values, [2.0, 1.0]) and sent.weight == 0.75


def test_training_displacement_adds_to_the_mass() -> None:
    x = models(4, 0)
    h = Harness(pushsum_cores(static(4, 0)), rng_chooser(np.random.default_rng(0)))
    current = run_pushsum(h, list(x), steps=3)
    before, _ = pushsum_mass(h)
    displacement = np.array([0.5, -1.0, 0.25, 2.0])
    held = h.cores[2].weight  # the displacement enters the mass scaled by the node's weight
    h.start(2, h.cores[2].next_round, current[2] + displacement)
    after, weight = pushsum_mass(h)
    assert np.allclose(after - before, held * displacement, atol=1e-9)
    assert abs(weight - 4) <= 1e-9


def test_pushsum_errors_say_whose_fault_it_is() -> None:
    core = PushSumGossip("0", schedule([PAIR], 0))
    with pytest.raises(LocalProtocolError):
        core.start_round(1, np.zeros(2), 0.0)
    core.start_round(0, np.zeros(2), 0.0)
    with pytest.raises(LocalProtocolError):
        core.start_round(0, np.zeros(2), 0.0)
    with pytest.raises(PeerProtocolError) as info:
        core.receive("1", GossipMessage("2", 0, dense(np.zeros(2))), 0.0)
    assert info.value.peer == "1"
    with pytest.raises(PeerProtocolError):
        core.receive("1", GossipMessage("1", 0, dense(np.zeros(3))), 0.0)


def test_pushsum_frames_carry_float64_exactly() -> None:
    x = np.array([[1 / 3, np.pi], [np.e, -1e-300]])
    h = Harness(pushsum_cores([PAIR]), lambda n: 0)
    h.start(0, 0, x[0])
    (env,) = h.queue
    assert decode(env.frame).payload.values.dtype == np.float64
    h.deliver(0)
    assert np.array_equal(h.cores[1].numerator, 0.5 * x[0])


def test_a_node_running_ahead_moves_by_its_training_displacement_alone() -> None:
    """No shares arrive (its neighbour is behind): w halves every step, and the
    de-biased model must still move by what training moved it, not by d / w."""
    core = PushSumGossip("0", schedule([PAIR], 0))
    core.start_round(0, np.array([1.0, -2.0]), 0.0)
    displacement = np.array([0.125, 0.5])
    for step in range(1, 6):
        handed = core.model()
        core.start_round(step, handed + displacement, 0.0)
        assert core.weight == 0.5 ** (step + 1)
        assert np.allclose(core.model(), handed + displacement, rtol=1e-6)
