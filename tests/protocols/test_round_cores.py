"""The round cores of ``protocols.rounds`` driven directly: no engine, no torch, only bytes.

``Net`` is a tiny deterministic scheduler: a heap of (virtual time, sequence)
items, each a frame to deliver or a node to start; every frame a core sends
arrives ``latency`` later, handed over as a memoryview (as the daemon does);
cores are polled exactly at their deadlines. A node starts its next round
``train[node]`` after its previous one mixed. Nodes in ``dead`` never start,
and frames to or from them are lost.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import pytest
from gossip_harness import (
    column_stochastic_weights,
    directed_ring_graph,
    metropolis_weights,
    neighbourhood,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import secagg, wire
from protocols.compression import NoCompression
from protocols.errors import DecodeError, PeerProtocolError
from protocols.gossip import (
    Buffered,
    ChocoGossip,
    LateArrival,
    Neighbourhood,
    PushSumGossip,
    Rejected,
    RoundMixed,
    Straggler,
    SyncGossip,
)
from protocols.rounds import (
    DeclarationExpired,
    DeclarationHeld,
    GossipRoundCore,
    RoundCore,
    RoundEvent,
    RoundOutput,
    SecureRoundCore,
)
from protocols.secagg import Abandoned, SecAggConfig, Timeouts, error_bound

Matrix = np.ndarray

# --- the scheduler ----------------------------------------------------------------------


@dataclass
class Net:
    cores: dict[str, RoundCore]
    latency: float = 0.01
    rounds: int = 1
    train: dict[str, float] = field(default_factory=dict)
    dead: set[str] = field(default_factory=set)
    on_event: Callable[[Net, str, RoundEvent], None] | None = None
    now: float = 0.0
    models: dict[str, Any] = field(default_factory=dict)
    events: dict[str, list[RoundEvent]] = field(default_factory=dict)
    heap: list[tuple[float, int, str, Any]] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.events = {name: [] for name in self.cores}

    def at(self, when: float, kind: str, payload: Any) -> None:
        heapq.heappush(self.heap, (when, next(self.seq), kind, payload))

    def absorb(self, name: str, out: RoundOutput) -> None:
        for peer, frame in out.sends:
            assert isinstance(frame, bytes)
            if name not in self.dead and peer not in self.dead:
                self.at(self.now + self.latency, "frame", (name, peer, frame))
        for event in out.events:
            self.events[name].append(event)
            if self.on_event is not None:
                self.on_event(self, name, event)
            if isinstance(event, RoundMixed):
                self.models[name] = event.model
                if event.round + 1 < self.rounds:
                    self.at(self.now + self.train.get(name, 0.0), "start", (name, event.round + 1))

    def start(self, name: str, round: int) -> None:
        core = self.cores[name]
        self.absorb(name, core.begin_round(round, self.now))
        self.absorb(name, core.start_round(round, self.models[name], self.now))

    def launch(self, models: dict[str, Any]) -> None:
        """Start round 0 everywhere, each node ``train[node]`` after time 0."""
        self.models = {name: np.array(x, copy=True) for name, x in models.items()}
        for name in self.cores:
            if name not in self.dead:
                self.at(self.train.get(name, 0.0), "start", (name, 0))

    def step(self, until: float = 1e9) -> bool:
        """Do the next thing (deliver, start, or poll at a deadline); False when none is left."""
        deadlines = [c.deadline for c in self.cores.values() if c.deadline is not None]
        head = self.heap[0][0] if self.heap else None
        soonest = min([t for t in [head, *deadlines] if t is not None], default=None)
        if soonest is None or soonest > until:
            return False
        self.now = soonest
        if head is not None and head <= soonest:
            _, _, kind, payload = heapq.heappop(self.heap)
            if kind == "start":
                self.start(*payload)
            else:
                src, dst, frame = payload
                self.absorb(dst, self.cores[dst].receive(src, memoryview(frame), self.now))
            return True
        for name, core in self.cores.items():
            if core.deadline is not None and core.deadline <= self.now:
                self.absorb(name, core.poll(self.now))
        return True

    def run(self, models: dict[str, Any], until: float = 1e9) -> Net:
        self.launch(models)
        while self.step(until):
            pass
        return self

    def of(self, name: str, kind: type) -> list[Any]:
        return [e for e in self.events[name] if isinstance(e, kind)]

    def mixed(self, name: str, round: int) -> RoundMixed:
        (event,) = [e for e in self.of(name, RoundMixed) if e.round == round]
        return event


# --- graphs and cores -------------------------------------------------------------------


def names(n: int) -> list[str]:
    return [str(i) for i in range(n)]


def small_graph() -> nx.Graph:
    """Five nodes, complete but for the edge 0-1: degrees 3 and 4, weights not uniform."""
    g = nx.complete_graph(5)
    g.remove_edge(0, 1)
    return g


def hoods(w: Matrix) -> Callable[[str, int], Neighbourhood]:
    table = {str(i): neighbourhood(w, i) for i in range(w.shape[0])}
    return lambda node, _round: table[node]


def gossip_net(w: Matrix, make: Callable[[str, Any], Any], **kwargs: Any) -> Net:
    hood_of = hoods(w)
    cores: dict[str, RoundCore] = {}
    for name in names(w.shape[0]):
        cores[name] = GossipRoundCore(make(name, lambda r, name=name: hood_of(name, r)))
    return Net(cores, **kwargs)


def initial(n: int, dim: int, seed: int = 0, dtype: Any = np.float64) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {str(i): rng.normal(size=dim).astype(dtype) for i in range(n)}


def stacked(models: dict[str, Any]) -> Matrix:
    return np.stack([np.asarray(models[str(i)], dtype=np.float64) for i in range(len(models))])


def box_key(name: str) -> bytes:
    return hashlib.sha256(f"test box key/{name}".encode()).digest()


CFG = SecAggConfig(scale=2.0**12, clip=8.0)
TIMEOUTS = Timeouts(share=5.0, masked=5.0, unmask=5.0)


def secure_cores(
    w: Matrix,
    dim: int,
    *,
    drops: dict[str, frozenset[int]] | None = None,
    confirm: bool = False,
) -> dict[str, RoundCore]:
    hood_of = hoods(w)
    all_names = names(w.shape[0])
    public = {name: secagg.box_public_key(box_key(name)) for name in all_names}
    cores: dict[str, RoundCore] = {}
    for name in all_names:

        def seed(round: int, receiver: str, name: str = name) -> bytes:
            return hashlib.sha256(f"self seed/{name}/{round}/{receiver}".encode()).digest()

        cores[name] = SecureRoundCore(
            name,
            hood_of,
            CFG,
            federation_id=b"f" * 32,
            box_private=box_key(name),
            public_keys=public,
            self_seed=seed,
            timeouts=TIMEOUTS,
            dim=dim,
            drop_rounds=(drops or {}).get(name, frozenset()),
            declarations_need_confirmation=confirm,
        )
    return cores


def renormalised(w: Matrix, x: Matrix, i: int, present: set[int]) -> Matrix:
    """Row i of W x over the node itself and the neighbours in ``present``, reweighted."""
    keep = [j for j in range(w.shape[0]) if j == i or (j in present and w[i, j] > 0)]
    weights = w[i, keep]
    return (weights @ x[keep]) / weights.sum()


# --- sync, CHOCO, push-sum --------------------------------------------------------------


def test_sync_round_is_w_times_x() -> None:
    w = metropolis_weights(small_graph())
    x = initial(5, 7)
    net = gossip_net(w, lambda name, hood: SyncGossip(name, hood)).run(x)
    np.testing.assert_allclose(stacked(net.models), w @ stacked(x), rtol=1e-12, atol=1e-14)


def test_sync_rounds_at_different_speeds_are_w_power_r_times_x() -> None:
    """Nodes train for different times: early frames are buffered, the result is W^R x."""
    w = metropolis_weights(small_graph())
    x = initial(5, 4, seed=1)
    train = {str(i): 0.3 * i for i in range(5)}
    net = gossip_net(w, lambda name, hood: SyncGossip(name, hood), rounds=4, train=train).run(x)
    expected = np.linalg.matrix_power(w, 4) @ stacked(x)
    np.testing.assert_allclose(stacked(net.models), expected, rtol=1e-12, atol=1e-14)
    assert net.of("4", Buffered)  # the slowest found its neighbours' frames waiting


def test_choco_without_compression_and_gamma_one_equals_sync() -> None:
    w = metropolis_weights(small_graph())
    x = initial(5, 6, seed=2, dtype=np.float32)  # CHOCO's copies are float32

    def sync(name: str, hood: Any) -> SyncGossip:
        return SyncGossip(name, hood)

    def choco(name: str, hood: Any) -> ChocoGossip:
        return ChocoGossip(name, hood, compressor=NoCompression(), gamma=1.0)

    plain = gossip_net(w, sync, rounds=3).run(x)
    exact = gossip_net(w, choco, rounds=3).run(x)
    np.testing.assert_allclose(stacked(exact.models), stacked(plain.models), rtol=1e-5, atol=1e-6)
    assert not np.allclose(stacked(plain.models), stacked(x))  # three rounds did mix


def test_pushsum_conserves_mass_and_reaches_the_average() -> None:
    rng = np.random.default_rng(3)
    w = column_stochastic_weights(directed_ring_graph(6, rng))
    x = initial(6, 5, seed=3)
    train = {str(i): 0.5 + 0.1 * i for i in range(6)}  # no barrier: nodes step at their pace
    total = stacked(x).sum(axis=0)
    hood_of = hoods(w)
    pushsum = {name: PushSumGossip(name, lambda r, name=name: hood_of(name, r)) for name in x}
    net = Net({name: GossipRoundCore(core) for name, core in pushsum.items()})
    net.rounds, net.train, net.latency = 80, train, 0.2
    net.launch(x)
    steps = 0
    while net.step():
        steps += 1
        held = [np.zeros(5)] + [c.numerator for c in pushsum.values() if c.numerator is not None]
        held += [x[n] for n, c in pushsum.items() if c.next_round == 0]  # not stepped yet
        weight = sum(c.weight for c in pushsum.values())
        for _, _, kind, payload in net.heap:
            if kind == "frame":
                message = wire.decode(payload[2])
                held.append(np.asarray(message.payload.values))
                weight += message.weight
        np.testing.assert_allclose(np.sum(held, axis=0), total, rtol=1e-12, atol=1e-12)
        assert weight == pytest.approx(6.0, rel=1e-12)
    assert steps > 6 * 80 and all(c.next_round == 80 for c in pushsum.values())
    final = np.stack([pushsum[n].model() for n in names(6)])
    np.testing.assert_allclose(final, np.tile(total / 6, (6, 1)), atol=1e-4)


# --- secure rounds ----------------------------------------------------------------------


def secure_tolerance(x: Matrix) -> float:
    return error_bound(CFG, 5) + 1e-6 * float(np.abs(x).max())


def test_secure_round_equals_plain_mixing_up_to_the_step() -> None:
    w = metropolis_weights(small_graph())
    x = initial(5, 9, seed=4, dtype=np.float32)
    net = Net(secure_cores(w, 9)).run(x)
    secure = stacked(net.models)
    plain = w @ stacked(x)
    assert np.abs(secure - plain).max() <= secure_tolerance(plain)
    assert all(net.mixed(n, 0).stragglers == () for n in names(5))


def test_secure_rounds_match_plain_rounds_over_several_rounds() -> None:
    w = metropolis_weights(small_graph())
    x = initial(5, 3, seed=5, dtype=np.float32)
    train = {str(i): 0.2 * i for i in range(5)}
    net = Net(secure_cores(w, 3), rounds=3, train=train).run(x)
    plain = np.linalg.matrix_power(w, 3) @ stacked(x)
    assert np.abs(stacked(net.models) - plain).max() <= 3 * secure_tolerance(plain)


def test_a_neighbour_dropping_out_after_dealing_its_shares_is_recovered() -> None:
    w = metropolis_weights(small_graph())
    x = initial(5, 6, seed=6, dtype=np.float32)
    net = Net(secure_cores(w, 6, drops={"4": frozenset({0})})).run(x)
    survivors = {0, 1, 2, 3}
    for i in survivors:
        expected = renormalised(w, stacked(x), i, survivors)
        assert np.abs(net.models[str(i)] - expected).max() <= secure_tolerance(expected)
        mixed = net.mixed(str(i), 0)
        assert mixed.stragglers == ("4",) and "4" not in mixed.arrived
        assert net.of(str(i), Straggler) == [Straggler(0, "4")]
    np.testing.assert_array_equal(net.models["4"], x["4"])  # the dropped keeps its own


# --- the dropout declaration held until the shell confirms it ----------------------------


def ledger_shell(
    confirm: bool,
) -> tuple[Callable[[Net, str, RoundEvent], None], dict[tuple[int, str], frozenset[str]]]:
    """A shell with a 'ledger' of declarations: records a receiver's, confirms held ones."""
    ledger: dict[tuple[int, str], frozenset[str]] = {}

    def on_event(net: Net, name: str, event: RoundEvent) -> None:
        if isinstance(event, Straggler):
            key = (event.round, name)
            ledger[key] = ledger.get(key, frozenset()) | {event.peer}
        elif isinstance(event, DeclarationHeld) and confirm:
            core = net.cores[name]
            assert isinstance(core, SecureRoundCore)
            recorded = ledger[(event.round, event.receiver)]
            net.absorb(
                name, core.confirm_declaration(event.round, event.receiver, recorded, net.now)
            )

    return on_event, ledger


def test_held_declarations_are_acted_on_once_confirmed() -> None:
    w = metropolis_weights(small_graph())
    x = initial(5, 4, seed=7, dtype=np.float32)
    on_event, ledger = ledger_shell(confirm=True)
    cores = secure_cores(w, 4, drops={"4": frozenset({0})}, confirm=True)
    net = Net(cores, on_event=on_event).run(x)
    survivors = {0, 1, 2, 3}
    for i in survivors:
        expected = renormalised(w, stacked(x), i, survivors)
        assert np.abs(net.models[str(i)] - expected).max() <= secure_tolerance(expected)
        held = net.of(str(i), DeclarationHeld)
        # one held declaration per receiver this node feeds that lost node 4
        assert sorted(e.receiver for e in held) == sorted(
            str(j) for j in survivors if j != i and w[j, i] > 0 and w[j, 4] > 0
        )
        assert all(e.dropped == ("4",) and e.peer == e.receiver for e in held)
        assert net.of(str(i), DeclarationExpired) == []
    assert set(ledger) == {(0, str(j)) for j in survivors if w[j, 4] > 0}


def test_unconfirmed_declarations_expire_and_their_receivers_abandon() -> None:
    w = metropolis_weights(small_graph())
    x = initial(5, 4, seed=8, dtype=np.float32)
    on_event, _ = ledger_shell(confirm=False)
    cores = secure_cores(w, 4, drops={"4": frozenset({0})}, confirm=True)
    net = Net(cores, on_event=on_event).run(x)
    for i in range(4):
        name = str(i)
        held = net.of(name, DeclarationHeld)
        expired = net.of(name, DeclarationExpired)
        assert held and sorted((e.round, e.receiver, e.dropped, e.peer) for e in expired) == sorted(
            (e.round, e.receiver, e.dropped, e.peer) for e in held
        )
        # nobody revealed, so every receiver that lost 4 abandons and keeps its own model
        if w[i, 4] > 0:
            assert [e.round for e in net.of(name, Abandoned)] == [0]
            np.testing.assert_array_equal(net.models[name], x[name])
    assert all(core.deadline is None for core in cores.values())


def held_core() -> tuple[SecureRoundCore, bytes, float]:
    """Node 0 in round 0 (shares dealt, input masked), and receiver 2's declaration of 4."""
    w = metropolis_weights(small_graph())
    x = initial(5, 4, seed=9, dtype=np.float32)
    cores = secure_cores(w, 4, drops={"4": frozenset({0})}, confirm=True)
    now = 1.0  # the rosters are relayed; the masked deadlines are at about 5
    Net(cores).run(x, until=now)
    core = cores["0"]
    assert isinstance(core, SecureRoundCore)
    declaration = secagg.DropoutDeclaration(0, "2", ("0", "1", "3"), ("4",)).encode()
    return core, declaration, now


def test_a_held_declaration_is_answered_only_once_confirmed() -> None:
    core, frame, now = held_core()
    held = core.receive("2", frame, now)
    assert held.sends == () and held.events == (DeclarationHeld(0, "2", ("4",), "2"),)
    out = core.confirm_declaration(0, "2", ["4"], now)
    [(peer, reveal)] = out.sends
    message = secagg.decode(reveal)
    assert peer == "2" and isinstance(message, secagg.Reveal) and message.receiver == "2"
    assert core.confirm_declaration(0, "2", ["4"], now) == RoundOutput()  # answered once


def test_a_wrong_confirmation_keeps_the_declaration_held_until_it_expires() -> None:
    core, frame, now = held_core()
    out = core.receive("2", frame, now)
    assert out.events == (DeclarationHeld(0, "2", ("4",), "2"),) and out.sends == ()
    assert core.receive("2", frame, now).events == ()  # the same one again: nothing new
    assert core.confirm_declaration(0, "2", {"4", "3"}, now) == RoundOutput()
    assert core.confirm_declaration(0, "3", {"4"}, now) == RoundOutput()
    assert core.deadline is not None and core.deadline <= now + TIMEOUTS.unmask
    expired = core.poll(now + TIMEOUTS.unmask).events
    assert DeclarationExpired(0, "2", ("4",), "2") in expired
    assert core.confirm_declaration(0, "2", {"4"}, now + TIMEOUTS.unmask) == RoundOutput()


def test_a_second_different_declaration_breaks_the_protocol() -> None:
    core, frame, now = held_core()
    core.receive("2", frame, now)
    other = secagg.DropoutDeclaration(0, "2", ("0", "1", "4"), ("3",)).encode()
    with pytest.raises(PeerProtocolError) as caught:
        core.receive("2", other, now)
    assert caught.value.peer == "2"


def test_only_the_receiver_may_send_its_declaration() -> None:
    core, frame, now = held_core()
    with pytest.raises(PeerProtocolError) as caught:
        core.receive("3", frame, now)
    assert caught.value.peer == "3"


def test_without_the_option_a_declaration_is_acted_on_at_once() -> None:
    w = metropolis_weights(small_graph())
    x = initial(5, 4, seed=10, dtype=np.float32)
    net = Net(secure_cores(w, 4, drops={"4": frozenset({0})}, confirm=False)).run(x)
    assert all(net.of(n, DeclarationHeld) == [] for n in names(5))
    assert all(net.of(n, Abandoned) == [] for n in names(5))


# --- stragglers at a deadline -----------------------------------------------------------


def test_sync_closes_over_a_straggler_at_its_deadline_then_reports_it_late() -> None:
    w = metropolis_weights(small_graph())
    x = initial(5, 5, seed=11)
    train = {"3": 8.0}  # node 3 starts long after its neighbours' deadline of 5

    def sync(name: str, hood: Any) -> SyncGossip:
        return SyncGossip(name, hood, round_timeout=5.0)

    net = gossip_net(w, sync, train=train).run(x)
    others = {0, 1, 2, 4}
    for i in others:
        name = str(i)
        assert net.of(name, Straggler) == [Straggler(0, "3")]
        mixed = net.mixed(name, 0)
        assert mixed.stragglers == ("3",) and "3" not in mixed.arrived
        np.testing.assert_allclose(
            net.models[name], renormalised(w, stacked(x), i, others), rtol=1e-12
        )
        assert net.of(name, LateArrival) == [LateArrival(0, "3", applied=False)]
    # node 3 found every neighbour's frame waiting: an exact round over all of them
    np.testing.assert_allclose(net.models["3"], (w @ stacked(x))[3], rtol=1e-12)


def test_secure_neighbour_that_never_shares_is_left_out_at_the_share_deadline() -> None:
    w = metropolis_weights(small_graph())
    x = initial(5, 4, seed=12, dtype=np.float32)
    cores = secure_cores(w, 4)
    net = Net(cores, dead={"4"}).run(x)
    for i in range(4):
        expected = renormalised(w, stacked(x), i, {0, 1, 2, 3})
        assert np.abs(net.models[str(i)] - expected).max() <= secure_tolerance(expected)
        assert "4" in net.mixed(str(i), 0).stragglers or w[i, 4] == 0


# --- anything a peer sends: it works, or it raises the documented errors ------------------


def reference_frames() -> list[bytes]:
    """Valid frames of every kind, taken from a short secure run and a sync run."""
    w = metropolis_weights(small_graph())
    seen: list[bytes] = []
    cores = secure_cores(w, 3, drops={"4": frozenset({0})})
    net = Net(cores)
    original = net.absorb

    def absorb(name: str, out: RoundOutput) -> None:
        seen.extend(frame for _, frame in out.sends)
        original(name, out)

    net.absorb = absorb  # type: ignore[method-assign]
    net.run(initial(5, 3, dtype=np.float32))
    seen.append(wire.encode(wire.GossipMessage("1", 0, wire.dense(np.ones(3)))))
    return list(dict.fromkeys(seen))


FRAMES = reference_frames()


def fresh_cores() -> list[RoundCore]:
    """A secure node and a sync node, each in the middle of round 0."""
    w = metropolis_weights(small_graph())
    secure = secure_cores(w, 3)["0"]
    secure.begin_round(0, 0.0)
    hood_of = hoods(w)
    plain = GossipRoundCore(SyncGossip("0", lambda r: hood_of("0", r)), max_elements=64)
    plain.start_round(0, np.zeros(3), 0.0)
    return [secure, plain]


def mutated(data: st.DataObject) -> bytes:
    frame = bytearray(data.draw(st.sampled_from(FRAMES), label="frame"))
    for _ in range(data.draw(st.integers(0, 4), label="flips")):
        k = data.draw(st.integers(0, len(frame) - 1), label="at")
        frame[k] = data.draw(st.integers(0, 255), label="byte")
    cut = data.draw(st.integers(0, len(frame)), label="cut")
    return bytes(frame[:cut]) if data.draw(st.booleans(), label="truncate") else bytes(frame)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_receive_either_works_or_raises_the_documented_errors(data: st.DataObject) -> None:
    cores = fresh_cores()
    for _ in range(data.draw(st.integers(1, 4), label="frames")):
        if data.draw(st.booleans(), label="from a real frame"):
            frame = mutated(data)
        else:
            frame = data.draw(st.binary(max_size=300), label="raw")
        peer = data.draw(st.sampled_from(["1", "2", "3", "4", "x"]), label="peer")
        for core in cores:
            try:
                out = core.receive(peer, memoryview(frame), 1.0)
            except PeerProtocolError as exc:
                assert exc.peer == peer
            except DecodeError:
                pass
            else:
                assert isinstance(out, RoundOutput)
                assert all(isinstance(f, bytes) for _, f in out.sends)


def test_the_reference_frames_cover_every_kind() -> None:
    kinds = set()
    for frame in FRAMES:
        try:
            kinds.add(type(secagg.decode(frame)).__name__)
        except DecodeError:
            kinds.add(type(wire.decode(frame)).__name__)
    assert {"ShareKeys", "ShareRelay", "MaskedInput", "DropoutDeclaration", "Reveal"} <= kinds
    assert "GossipMessage" in kinds


# --- a hostile neighbour ------------------------------------------------------------------


def test_a_secure_core_refuses_rounds_outside_its_window() -> None:
    core, _, now = held_core()  # node 0, round 0 begun
    hood = sorted(hoods(metropolis_weights(small_graph()))("0", 0).in_weights)
    peer = hood[0]

    def share_keys(round_: int) -> bytes:
        return secagg.ShareKeys(round_, "0", peer, {h: b"sealed" for h in hood}).encode()

    opened = len(core._receivers)
    core.receive(peer, share_keys(2), now)  # a neighbour a little ahead: kept
    assert len(core._receivers) == opened + 1
    for far in (1000, 10**9):
        with pytest.raises(PeerProtocolError, match="outside the window"):
            core.receive(peer, share_keys(far), now)
    assert len(core._receivers) == opened + 1
    core.resume_at(100)
    with pytest.raises(PeerProtocolError, match="outside the window"):  # long past
        core.receive(peer, share_keys(50), now)


def test_sync_gossip_refuses_nan_and_rejects_a_buffered_model_of_the_wrong_length() -> None:
    w = metropolis_weights(small_graph())
    core = SyncGossip("0", lambda r: hoods(w)("0", r), round_timeout=5.0)
    peer = sorted(neighbourhood(w, 0).in_weights)[0]
    for bad in (np.nan, np.inf, -np.inf):
        poisoned = np.full(4, bad, np.float32)
        with pytest.raises(PeerProtocolError, match="NaN or infinite"):
            core.receive(peer, wire.GossipMessage(peer, 0, wire.dense(poisoned)), 0.0)
    long = wire.GossipMessage(peer, 0, wire.dense(np.ones(7, np.float32)))
    assert core.receive(peer, long, 0.0).events == (Buffered(0, peer),)
    out = core.start_round(0, np.zeros(4, np.float32), 0.0)  # once raised out of here
    assert Rejected(0, peer, f"peer {peer!r}: model length does not match") in out.events
