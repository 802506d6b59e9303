"""SyncGossip (exact D-PSGD) and ChocoGossip (CHOCO-SGD) driven through the wire by the harness."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import msgpack
import networkx as nx
import numpy as np
import pytest
from gossip_harness import (
    Harness,
    choco_cores,
    data_chooser,
    metropolis_weights,
    neighbourhood,
    random_connected_graph,
    rng_chooser,
    run_barrier,
    schedule,
    second_eigenvalue,
    sync_cores,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.compression import (
    NoCompression,
    QuantizeCompressor,
    TopKCompressor,
    _pack,
    decompress,
)
from protocols.errors import DecodeError, LocalProtocolError, PeerProtocolError
from protocols.gossip import (
    Buffered,
    ChocoGossip,
    LateArrival,
    Phase,
    RoundMixed,
    Straggler,
    SyncGossip,
)
from protocols.mixing import choco_mix, consensus_distance
from protocols.wire import Encoding, GossipMessage, Payload, decode, dense, encode

FAST = settings(max_examples=30, deadline=None)

seeds = st.integers(0, 2**32 - 1)
sizes = st.integers(2, 7)


def setup(n: int, seed: int, dim: int = 5, dtype: Any = np.float32, p: float = 0.3) -> Any:
    rng = np.random.default_rng(seed)
    w = metropolis_weights(random_connected_graph(n, rng, p))
    x = rng.standard_normal((n, dim)).astype(dtype)
    return w, x


def in_neighbours(w: np.ndarray, i: int) -> tuple[str, ...]:
    return tuple(sorted(str(j) for j in range(w.shape[0]) if j != i and w[i, j] > 0))


def quadratic_step(targets: np.ndarray, lr: float = 0.3) -> Any:
    """Local training on f_i(x) = |x - c_i|^2 / 2: one gradient step, deterministic."""

    def step(i: int, r: int, model: np.ndarray) -> np.ndarray:
        return (model - np.float32(lr) * (model - targets[i])).astype(model.dtype)

    return step


def message(sender: str, round: int, values: Any, dtype: Any = np.float32) -> GossipMessage:
    return GossipMessage(sender, round, dense(np.asarray(values, dtype=dtype)))


def wire(m: GossipMessage) -> GossipMessage:
    return decode(encode(m))


PAIR = np.array([[0.5, 0.5], [0.5, 0.5]])
PATH3 = metropolis_weights(nx.path_graph(3))
K3 = metropolis_weights(nx.complete_graph(3))


# --- SyncGossip: exact averaging ---------------------------------------------------------


@FAST
@given(sizes, seeds, st.sampled_from([np.float32, np.float64]), st.data())
def test_one_round_equals_w_times_x_in_any_delivery_order(
    n: int, seed: int, dtype: Any, data: st.DataObject
) -> None:
    w, x = setup(n, seed, dtype=dtype)
    h = Harness(sync_cores(w), data_chooser(data))
    history = run_barrier(h, list(x), rounds=1)
    expected = w @ x.astype(np.float64)
    for i in range(n):
        event = h.mixed[i][0]
        assert event.model.dtype == np.dtype(dtype)
        assert np.allclose(history[i][1], expected[i], rtol=0, atol=1e-6)
        assert event.arrived == in_neighbours(w, i)
        assert event.stragglers == ()
    assert not h.queue


@FAST
@given(sizes, seeds, st.data())
def test_several_rounds_are_powers_of_w_and_conserve_the_mean(
    n: int, seed: int, data: st.DataObject
) -> None:
    w, x = setup(n, seed, dtype=np.float64)
    rounds = 4
    history = run_barrier(Harness(sync_cores(w), data_chooser(data)), list(x), rounds)
    for r in range(rounds + 1):
        models = np.array([history[i][r] for i in range(n)])
        assert np.allclose(models, np.linalg.matrix_power(w, r) @ x, atol=1e-12)
        assert np.allclose(models.mean(axis=0), x.mean(axis=0), atol=1e-12)


@FAST
@given(sizes, seeds, st.data())
def test_time_varying_neighbourhoods_multiply_their_matrices(
    n: int, seed: int, data: st.DataObject
) -> None:
    rng = np.random.default_rng(seed)
    ws = [metropolis_weights(random_connected_graph(n, rng, 0.3)) for _ in range(3)]
    x = rng.standard_normal((n, 3))
    cores = [SyncGossip(str(i), schedule(ws, i)) for i in range(n)]
    history = run_barrier(Harness(cores, data_chooser(data)), list(x), rounds=3)
    expected = ws[2] @ ws[1] @ ws[0] @ x
    assert np.allclose([history[i][3] for i in range(n)], expected, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_repeated_rounds_converge_to_the_average(seed: int) -> None:
    n = 6 + seed
    w, x = setup(n, seed, dim=4, dtype=np.float64, p=0.4)
    lam = second_eigenvalue(w)
    assert lam < 1
    rounds = min(200, math.ceil(math.log(1e-4) / math.log(lam)) + 1)
    rng = np.random.default_rng(seed)
    history = run_barrier(Harness(sync_cores(w), rng_chooser(rng)), list(x), rounds)
    start = consensus_distance(x)
    previous = start
    for r in range(1, rounds + 1):
        models = np.array([history[i][r] for i in range(n)])
        distance = consensus_distance(models)
        assert distance <= lam**r * start * (1 + 1e-9) + 1e-12  # spectral contraction
        assert distance <= previous + 1e-12
        assert np.allclose(models.mean(axis=0), x.mean(axis=0), atol=1e-12)
        previous = distance
    final = np.array([history[i][rounds] for i in range(n)])
    assert consensus_distance(final) <= 1e-4 * start
    assert np.allclose(final, x.mean(axis=0), atol=1e-3)


@pytest.mark.parametrize("n", [2, 3, 6])
def test_complete_graph_averages_in_one_round(n: int) -> None:
    w = metropolis_weights(nx.complete_graph(n))
    x = np.random.default_rng(n).standard_normal((n, 3))
    history = run_barrier(Harness(sync_cores(w), rng_chooser(np.random.default_rng(0))), list(x), 1)
    for i in range(n):
        assert np.allclose(history[i][1], x.mean(axis=0), atol=1e-12)


@FAST
@given(sizes, seeds, st.data())
def test_sync_with_local_steps_is_d_psgd(n: int, seed: int, data: st.DataObject) -> None:
    w, x = setup(n, seed, dtype=np.float64)
    targets = np.random.default_rng(seed + 1).standard_normal(x.shape)
    step = quadratic_step(targets)
    rounds = 3
    history = run_barrier(Harness(sync_cores(w), data_chooser(data)), list(x), rounds, step)
    expected = x.copy()
    for r in range(rounds):
        half = np.array([step(i, r, expected[i]) for i in range(n)])
        expected = w @ half
        assert np.allclose([history[i][r + 1] for i in range(n)], expected, atol=1e-12)


# --- SyncGossip: early, late and missing messages -------------------------------------------


def test_early_messages_are_buffered_and_used() -> None:
    x0, x1 = np.array([0.0, 4.0], np.float32), np.array([2.0, 0.0], np.float32)
    h = Harness(sync_cores(PAIR), lambda n: 0)
    h.start(0, 0, x0)
    h.start(1, 0, x1)
    assert [(e.src, e.dst) for e in h.queue] == [(0, 1), (1, 0)]
    h.deliver(1)  # node 0 closes round 0
    assert np.allclose(h.latest[0], [1.0, 2.0])
    h.start(0, 1, np.array([10.0, 10.0], np.float32))
    out = h.deliver(1)  # node 0's round-1 message reaches node 1 while it still waits for round 0
    assert out.events == (Buffered(1, "0"),)
    assert h.cores[1].phase is Phase.WAITING and h.cores[1].next_round == 0
    h.deliver(0)  # node 0's round-0 message: node 1 closes round 0
    assert np.allclose(h.latest[1], [1.0, 2.0])
    started = h.start(1, 1, np.array([0.0, 0.0], np.float32))
    mixed = [e for e in started.events if isinstance(e, RoundMixed)]
    assert len(mixed) == 1 and mixed[0].round == 1 and mixed[0].arrived == ("0",)
    assert np.allclose(mixed[0].model, [5.0, 5.0])
    assert h.cores[1].phase is Phase.IDLE and h.cores[1].next_round == 2


def test_messages_for_the_next_round_are_buffered_while_idle() -> None:
    core = SyncGossip("1", schedule([PAIR], 1))
    out = core.receive("0", wire(message("0", 0, [4.0])), now=0.0)
    assert out.events == (Buffered(0, "0"),) and core.phase is Phase.IDLE
    out = core.start_round(0, np.array([2.0], np.float32), now=1.0)
    assert [p for p, _ in out.sends] == ["0"]
    assert len(out.events) == 1 and isinstance(out.events[0], RoundMixed)
    assert np.allclose(out.events[0].model, [3.0])


def test_messages_too_far_ahead_break_the_protocol() -> None:
    core = SyncGossip("1", schedule([PAIR], 1), max_rounds_ahead=2)
    core.start_round(0, np.zeros(1, np.float32), now=0.0)
    assert core.receive("0", message("0", 2, [1.0]), 0.0).events == (Buffered(2, "0"),)
    with pytest.raises(PeerProtocolError) as info:
        core.receive("0", message("0", 3, [1.0]), 0.0)
    assert info.value.peer == "0"


def test_deadline_reports_stragglers_and_mixes_over_who_arrived() -> None:
    x = np.array([[3.0], [6.0], [30.0]], np.float32)
    h = Harness(sync_cores(K3, round_timeout=5.0), lambda n: 0)
    assert h.cores[0].deadline is None
    h.start(0, 0, x[0])
    h.start(1, 0, x[1])
    assert h.cores[0].deadline == 5.0
    for k in reversed([k for k, e in enumerate(h.queue) if e.dst != 2]):
        h.deliver(k)
    assert h.cores[0].phase is Phase.WAITING
    h.advance(4.9)
    assert h.mixed[0] == {} and h.mixed[1] == {}
    h.advance(0.1)
    for i in (0, 1):
        assert h.of_type(i, Straggler) == [Straggler(0, "2")]
        event = h.mixed[i][0]
        assert event.stragglers == ("2",) and event.arrived == (str(1 - i),)
        assert np.allclose(event.model, [4.5])  # (x0/3 + x1/3) / (2/3)
        assert h.cores[i].phase is Phase.IDLE and h.cores[i].deadline is None
    # node 2 turns up late: its message is reported and changes nothing
    h.start(2, 0, x[2])
    for k in reversed([k for k, e in enumerate(h.queue) if e.src == 2]):
        out = h.deliver(k)
        assert out.events == (LateArrival(0, "2", applied=False),)
    assert np.allclose(h.mixed[0][0].model, [4.5])
    h.flush()  # node 2 itself heard everybody in time
    assert np.allclose(h.mixed[2][0].model, [13.0]) and h.mixed[2][0].stragglers == ()
    # the next round is whole again
    history = run_barrier(h, [h.latest[i] for i in range(3)], rounds=2)
    assert np.allclose([history[i][-1] for i in range(3)], (4.5 + 4.5 + 13.0) / 3)


def test_a_message_arriving_after_the_deadline_closes_the_round_on_receive() -> None:
    core = SyncGossip("1", schedule([PATH3], 1), round_timeout=1.0)
    core.start_round(0, np.zeros(1, np.float32), now=0.0)
    out = core.receive("0", message("0", 0, [3.0]), now=2.0)
    assert out.events[0] == Straggler(0, "2")
    mixed = out.events[1]
    assert isinstance(mixed, RoundMixed) and mixed.arrived == ("0",) and mixed.stragglers == ("2",)
    w = PATH3[1]
    assert np.allclose(mixed.model, 3.0 * w[0] / (w[0] + w[1]))


def test_poll_without_a_timeout_never_closes() -> None:
    core = SyncGossip("0", schedule([PAIR], 0))
    core.start_round(0, np.zeros(1, np.float32), now=0.0)
    assert core.poll(1e12).events == () and core.phase is Phase.WAITING


def test_mix_in_place_writes_over_the_model_once_its_messages_are_out() -> None:
    own = np.array([0.0, 4.0], np.float32)
    core = SyncGossip("0", schedule([PAIR], 0), mix_in_place=True)
    (sent,) = core.start_round(0, own, 0.0).sends
    frame = encode(sent[1])  # what a driver does before its next call into the core
    (mixed,) = core.receive("1", wire(message("1", 0, [2.0, 0.0])), 0.0).events
    assert isinstance(mixed, RoundMixed) and mixed.model is own
    assert np.array_equal(own, [1.0, 2.0]) and np.array_equal(decode(frame).payload.values, [0, 4])


def test_mix_in_place_leaves_the_published_model_alone_when_start_closes_the_round() -> None:
    own = np.array([0.0, 4.0], np.float32)
    core = SyncGossip("0", schedule([PAIR], 0), mix_in_place=True)
    core.receive("1", wire(message("1", 0, [2.0, 0.0])), 0.0)  # buffered: it came first
    out = core.start_round(0, own, 0.0)
    (mixed,) = out.events
    assert isinstance(mixed, RoundMixed) and mixed.model is not own
    assert np.array_equal(mixed.model, [1.0, 2.0])
    assert np.array_equal(out.sends[0][1].payload.values, [0.0, 4.0])  # still the trained model


def test_mix_in_place_gives_the_same_numbers() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 1000)).astype(np.float32)
    results = []
    for in_place in (False, True):
        core = SyncGossip("1", schedule([K3], 1), mix_in_place=in_place)
        core.start_round(0, x[1].copy(), 0.0)
        core.receive("0", wire(message("0", 0, x[0])), 0.0)
        (mixed,) = core.receive("2", wire(message("2", 0, x[2])), 0.0).events
        assert isinstance(mixed, RoundMixed)
        results.append(mixed.model)
    assert np.array_equal(results[0], results[1])


# --- SyncGossip: errors say whose fault it is ------------------------------------------------


def test_sender_mismatch_is_the_peers_fault() -> None:
    core = SyncGossip("1", schedule([PATH3], 1))
    core.start_round(0, np.zeros(1, np.float32), 0.0)
    with pytest.raises(PeerProtocolError) as info:
        core.receive("0", message("2", 0, [1.0]), 0.0)
    assert info.value.peer == "0"


def test_a_message_resent_unchanged_is_dropped_and_a_different_one_is_the_peers_fault() -> None:
    """A link that comes back replays its frames: the same message again is harmless."""
    core = SyncGossip("1", schedule([PATH3], 1))
    core.start_round(0, np.zeros(1, np.float32), 0.0)
    core.receive("0", message("0", 0, [1.0]), 0.0)
    assert core.receive("0", message("0", 0, [1.0]), 0.0).events == ()
    with pytest.raises(PeerProtocolError, match="different"):
        core.receive("0", message("0", 0, [2.0]), 0.0)
    core.receive("0", message("0", 1, [1.0]), 0.0)  # buffered
    core.receive("0", message("0", 1, [1.0]), 0.0)  # resent while buffered: still one
    with pytest.raises(PeerProtocolError, match="different"):
        core.receive("0", message("0", 1, [3.0]), 0.0)
    (mixed,) = [e for e in core.receive("2", message("2", 0, [4.0]), 0.0).events]
    plain = SyncGossip("1", schedule([PATH3], 1))
    plain.start_round(0, np.zeros(1, np.float32), 0.0)
    plain.receive("0", message("0", 0, [1.0]), 0.0)
    (once,) = [e for e in plain.receive("2", message("2", 0, [4.0]), 0.0).events]
    np.testing.assert_array_equal(mixed.model, once.model)  # the resend counted once


def test_a_buffered_message_resent_after_it_was_used_is_dropped() -> None:
    core = SyncGossip("1", schedule([PATH3], 1))
    core.receive("0", message("0", 0, [1.0]), 0.0)  # buffered while idle
    core.start_round(0, np.zeros(1, np.float32), 0.0)
    assert core.receive("0", message("0", 0, [1.0]), 0.0).events == ()
    with pytest.raises(PeerProtocolError, match="different"):
        core.receive("0", message("0", 0, [5.0]), 0.0)


def test_non_neighbour_is_the_peers_fault() -> None:
    core = SyncGossip("0", schedule([PATH3], 0))
    core.start_round(0, np.zeros(1, np.float32), 0.0)
    with pytest.raises(PeerProtocolError) as info:
        core.receive("2", message("2", 0, [1.0]), 0.0)
    assert info.value.peer == "2"


@pytest.mark.parametrize("make", [SyncGossip, ChocoGossip])
def test_an_early_message_from_a_non_neighbour_does_not_break_our_own_start(make: Any) -> None:
    """A stranger's early frame must be refused on receive (the neighbourhood of a future
    round is known), not blow up the later ``start_round`` call after it committed the round."""
    core = make("0", schedule([PATH3], 0))
    with contextlib.suppress(PeerProtocolError):
        core.receive("2", message("2", 0, [1.0]), 0.0)
    out = core.start_round(0, np.zeros(1, np.float32), 0.0)
    assert [p for p, _ in out.sends] == ["1"]


def test_wrong_model_length_is_the_peers_fault() -> None:
    core = SyncGossip("0", schedule([PAIR], 0))
    core.start_round(0, np.zeros(3, np.float32), 0.0)
    with pytest.raises(PeerProtocolError):
        core.receive("1", message("1", 0, [1.0, 2.0]), 0.0)


@pytest.mark.parametrize("kind", ["topk", "quantized8"])
def test_sync_refuses_or_decompresses_compressed_payloads(kind: str) -> None:
    """Sync mixes ``payload.values`` as if dense: a top-k or 8-bit payload of the right length
    must be refused as the peer's fault or decompressed, never mixed as raw bytes."""
    v = np.array([1.0, -2.0, 3.0, 0.5], np.float32)
    rng = np.random.default_rng(0)
    payload = (TopKCompressor(0.5) if kind == "topk" else QuantizeCompressor(8)).compress(v, rng)
    core = SyncGossip("0", schedule([PAIR], 0))
    core.start_round(0, np.zeros(4, np.float32), 0.0)
    try:
        out = core.receive("1", wire(GossipMessage("1", 0, payload)), 0.0)
    except PeerProtocolError:
        return
    mixed = [e for e in out.events if isinstance(e, RoundMixed)]
    assert len(mixed) == 1
    assert np.allclose(mixed[0].model, 0.5 * decompress(payload))


def test_starting_out_of_order_is_our_fault() -> None:
    core = SyncGossip("0", schedule([PAIR], 0))
    with pytest.raises(LocalProtocolError):
        core.start_round(1, np.zeros(1, np.float32), 0.0)
    core.start_round(0, np.zeros(1, np.float32), 0.0)
    with pytest.raises(LocalProtocolError):
        core.start_round(0, np.zeros(1, np.float32), 0.0)
    with pytest.raises(LocalProtocolError):
        core.start_round(1, np.zeros(1, np.float32), 0.0)
    core.receive("1", message("1", 0, [0.0]), 0.0)
    with pytest.raises(LocalProtocolError):
        core.start_round(0, np.zeros(1, np.float32), 0.0)
    with pytest.raises(LocalProtocolError):
        SyncGossip("0", schedule([PAIR], 0), round_timeout=0.0)


def test_an_isolated_node_mixes_alone_at_once() -> None:
    core = SyncGossip("0", lambda r: neighbourhood(np.eye(1), 0))
    out = core.start_round(0, np.array([7.0], np.float32), 0.0)
    assert out.sends == ()
    assert isinstance(out.events[-1], RoundMixed) and np.allclose(out.events[-1].model, [7.0])


# --- ChocoGossip ---------------------------------------------------------------------------


@FAST
@given(sizes, seeds, st.data())
def test_choco_without_compression_equals_sync(n: int, seed: int, data: st.DataObject) -> None:
    w, x = setup(n, seed)
    targets = np.random.default_rng(seed + 1).standard_normal(x.shape).astype(np.float32)
    step = quadratic_step(targets)
    rounds = 3
    sync = run_barrier(Harness(sync_cores(w), data_chooser(data)), list(x), rounds, step)
    choco_h = Harness(choco_cores(w, compressor=NoCompression(), gamma=1.0), data_chooser(data))
    choco = run_barrier(choco_h, list(x), rounds, step)
    for i in range(n):
        for r in range(1, rounds + 1):
            assert np.allclose(choco[i][r], sync[i][r], rtol=1e-5, atol=1e-5)
    assert_copies_agree(choco_h, w)


def assert_copies_agree(h: Harness, w: np.ndarray) -> None:
    """Node i's public copy of j is j's own public copy, bit for bit (every frame delivered)."""
    n = w.shape[0]
    for i in range(n):
        for j in range(n):
            if i != j and w[i, j] > 0:
                assert np.array_equal(h.cores[i]._copies[str(j)], h.cores[j]._own_copy)


@FAST
@given(
    sizes,
    seeds,
    st.sampled_from([NoCompression(), QuantizeCompressor(3), TopKCompressor(0.4)]),
    st.floats(0.1, 1.0),
    st.data(),
)
def test_choco_copies_stay_equal_on_both_ends_in_any_order(
    n: int, seed: int, compressor: Any, gamma: float, data: st.DataObject
) -> None:
    w, x = setup(n, seed)
    h = Harness(choco_cores(w, compressor=compressor, gamma=gamma), data_chooser(data))
    history = run_barrier(h, list(x), rounds=3)
    assert_copies_agree(h, w)
    final = np.array([history[i][-1] for i in range(n)])
    # with consistent copies and doubly stochastic W, the consensus step keeps the mean
    assert np.allclose(final.mean(axis=0), x.mean(axis=0), atol=1e-5)


@pytest.mark.parametrize(
    ("compressor", "gamma"),
    [(QuantizeCompressor(8), 0.5), (QuantizeCompressor(4), 0.3), (TopKCompressor(0.3), 0.2)],
    ids=["q8", "q4", "top30"],
)
def test_choco_with_compression_reaches_consensus(compressor: Any, gamma: float) -> None:
    n, dim, rounds = 6, 20, 100
    w, x = setup(n, 5, dim=dim, p=0.4)
    h = Harness(choco_cores(w, compressor=compressor, gamma=gamma), rng_chooser(rng(3)))
    history = run_barrier(h, list(x), rounds)
    final = np.array([history[i][-1] for i in range(n)])
    assert consensus_distance(final) <= 1e-3 * consensus_distance(x)
    assert np.allclose(final.mean(axis=0), x.mean(axis=0), atol=1e-4)
    assert_copies_agree(h, w)


def test_choco_late_message_is_applied_to_the_copy() -> None:
    x = np.array([[3.0, 0.0], [6.0, 1.0], [30.0, -2.0]], np.float32)
    h = Harness(choco_cores(K3, round_timeout=5.0), lambda n: 0)
    run_barrier(h, list(x), rounds=1)  # round 0 with everybody: copies are non-zero
    models = [h.latest[i] for i in range(3)]
    copy_of_2 = h.cores[0]._copies["2"].copy()
    own_copy_0 = h.cores[0]._own_copy.copy()
    h.start(0, 1, models[0])
    h.start(1, 1, models[1])
    for k in reversed([k for k, e in enumerate(h.queue) if e.dst != 2]):
        h.deliver(k)
    h.advance(5.0)
    assert h.of_type(0, Straggler) == [Straggler(1, "2")]
    late_mix = h.mixed[0][1]
    assert late_mix.stragglers == ("2",)
    # the straggler's last public copy stands in for it
    new_own = own_copy_0 + (models[0] - own_copy_0)
    expected = choco_mix(
        models[0], new_own, [(1 / 3, h.cores[0]._copies["1"]), (1 / 3, copy_of_2)], 1.0
    )
    assert np.allclose(late_mix.model, expected, atol=1e-6)
    # node 2 catches up: its round-1 frame reaches node 0 late and is applied
    h.start(2, 1, models[2])
    k = next(k for k, e in enumerate(h.queue) if e.src == 2 and e.dst == 0)
    out = h.deliver(k)
    assert out.events == (LateArrival(1, "2", applied=True),)
    assert np.array_equal(h.cores[0]._copies["2"], h.cores[2]._own_copy)
    h.flush()
    assert_copies_agree(h, K3)


def test_choco_duplicate_late_message_is_not_applied_twice() -> None:
    """A replayed frame for a closed round must not be added to the copy a second time."""
    h = Harness(choco_cores(PAIR), lambda n: 0)
    h.start(0, 0, np.array([1.0, 2.0], np.float32))
    h.start(1, 0, np.array([3.0, 5.0], np.float32))
    replay = next(e.frame for e in h.queue if e.src == 1)
    h.flush()
    assert_copies_agree(h, PAIR)
    with contextlib.suppress(PeerProtocolError):
        h.cores[0].receive("1", decode(replay), 1.0)
    assert_copies_agree(h, PAIR)


def test_choco_late_message_from_a_stranger_is_the_peers_fault() -> None:
    core = choco_cores(PATH3)[0]
    core.start_round(0, np.zeros(1, np.float32), 0.0)
    core.receive("1", message("1", 0, [1.0]), 0.0)
    with pytest.raises(PeerProtocolError):
        core.receive("2", message("2", 0, [1.0]), 0.0)


def test_choco_one_bit_quantized_payload_is_refused_cleanly() -> None:
    """1-bit quantization has no levels (s = 0): payloads and frames with it are refused."""
    with pytest.raises(ValueError):
        Payload(Encoding.QUANTIZED, 8, _pack(np.ones(8, np.int16), 1), norm=1.0, bits=1)
    two_bit = Payload(Encoding.QUANTIZED, 8, _pack(np.ones(8, np.int16), 2), norm=1.0, bits=2)
    frame = encode(GossipMessage("1", 0, two_bit))
    forged = frame.replace(
        msgpack.packb("b") + msgpack.packb(2), msgpack.packb("b") + msgpack.packb(1)
    )
    assert forged != frame
    with pytest.raises(DecodeError):
        decode(forged)


def test_choco_refuses_bad_gamma() -> None:
    for gamma in (0.0, -0.5, 1.5):
        with pytest.raises(LocalProtocolError):
            ChocoGossip("0", schedule([PAIR], 0), gamma=gamma)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)
