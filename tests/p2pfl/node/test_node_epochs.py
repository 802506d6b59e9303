"""The daemon's epochs in pieces: frames routed by their round's epoch, and ``Membership``.

``Exchange`` hands a frame to the core of its round's epoch once the roster changed
(the old core answers late frames of the rounds before), and holds back frames of
rounds whose epoch is not known yet. ``Membership`` acknowledges changes with the
round the node is in, says what a round must wait for, and remembers the
acknowledgements of a member revoked since, so that boundaries fixed before never move.
"""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace
from typing import Any

import msgpack
import nacl.signing
import numpy as np
import pytest

from p2pfl.node.exchange import RETIRE_ROUNDS, Exchange
from p2pfl.node.joining import ask_model, decode_control, model_digest, model_reply, start_model
from p2pfl.node.membership import Membership
from p2pfl.node.round_epochs import RoundEpochs
from protocols import wire
from protocols.errors import DecodeError
from protocols.ledger import Ledger, node_id_for
from protocols.membership import Kind, change_key
from protocols.rounds import RoundOutput
from protocols.secagg import messages


def gossip_frame(round_index: int) -> bytes:
    return wire.encode(wire.GossipMessage("s", round_index, wire.dense(np.zeros(2, np.float32))))


def test_peek_reads_the_round_of_either_frame_kind_and_nothing_else() -> None:
    assert wire.peek_round(gossip_frame(41)) == 41
    share = messages.ShareKeys(7, "a" * 26, "b" * 26, {"c" * 26: b"x" * 80})
    assert messages.peek_round(messages.encode(share)) == 7
    abandon = messages.Abandon(3, "a" * 26, "why")
    assert messages.peek_round(messages.encode(abandon)) == 3
    for bad in (b"", b"P2G", b"SA\x02\x01\x00\x00\x00\x00", gossip_frame(1)[:12]):
        with pytest.raises(DecodeError):
            messages.peek_round(bad) if bad.startswith(b"SA") else wire.peek_round(bad)


class Core:
    """Records the frames it is fed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fed: list[int] = []
        self.deadline: float | None = None

    def receive(self, peer: str, body: Any, now: float) -> RoundOutput:
        self.fed.append(wire.peek_round(body))
        return RoundOutput((), ())

    def poll(self, now: float) -> RoundOutput:
        return RoundOutput((), ())


class Host:
    node_id = "me"

    def __init__(self) -> None:
        self.ledger = SimpleNamespace(progress=lambda: {}, round_of=lambda node: 0)
        self.errors: list[tuple[str, str]] = []

    def peer_error(self, peer: str, error: str, *, kind: str = "protocol") -> None:
        self.errors.append((peer, kind))

    def linked(self) -> list[str]:
        return []

    def wake_timer(self) -> None:
        pass


def test_frames_go_to_the_core_of_their_rounds_epoch() -> None:
    async def run() -> tuple[Core, Core, Exchange, Host]:
        old, new, host = Core("old"), Core("new"), Host()
        exchange = Exchange(host, old, secure=False, round=9)  # type: ignore[arg-type]
        channel = int(exchange.channel)
        exchange.receive("p", channel, memoryview(gossip_frame(8)))  # round 9, one core
        exchange.set_horizon(11)  # a change acknowledged: rounds 11.. of an unknown epoch
        for index in (9, 10, 11):  # rounds 10, 11, 12
            exchange.receive("p", channel, memoryview(gossip_frame(index)))
        assert old.fed == [8, 9] and new.fed == []
        exchange.switch(new, 11)  # the boundary is round 11
        exchange.set_horizon(None)
        assert new.fed == [10, 11]  # the held frames, to the new epoch's core
        exchange.receive("p", channel, memoryview(gossip_frame(9)))  # a late round 10
        exchange.receive("p", channel, memoryview(b"garbage"))
        return old, new, exchange, host

    old, new, exchange, host = asyncio.run(run())
    assert old.fed == [8, 9, 9] and new.fed == [10, 11]
    assert host.errors == [("p", "malformed")]
    exchange.round = 11 + RETIRE_ROUNDS
    exchange.prune()
    assert exchange._eras == [(11, new)]  # the old core retired


def test_frames_held_for_an_unknown_epoch_are_bounded_per_peer() -> None:
    async def run() -> Host:
        host = Host()
        exchange = Exchange(host, Core("c"), secure=False, round=1)  # type: ignore[arg-type]
        exchange.set_horizon(2)
        for _ in range(100):
            exchange.receive("p", int(exchange.channel), memoryview(gossip_frame(5)))
        return host

    host = asyncio.run(run())
    assert host.errors and set(host.errors) == {("p", "flood")}


# -- Membership on a real ledger ----------------------------------------------------------


class LedgerHost:
    """What ``Membership`` reaches of its node: the ledger, a key, the journal."""

    def __init__(self, ledger: Ledger, key: nacl.signing.SigningKey) -> None:
        self.ledger = ledger
        self.identity = SimpleNamespace(signing_key=key)
        self.node_id = node_id_for(bytes(key.verify_key))
        self.records: list[tuple[str, dict[str, Any]]] = []

    def record(self, event: str, **fields: Any) -> None:
        self.records.append((event, fields))

    def write_ledger(self, update: bytes) -> None:
        pass  # the ledger holds it already


def federation(n: int) -> tuple[Ledger, list[nacl.signing.SigningKey], list[str]]:
    keys = [nacl.signing.SigningKey.generate() for _ in range(n)]
    ledger = Ledger.found(keys[0], name="t", nonce=os.urandom(16), address="ws://a:1")
    for key in keys[1:]:
        ledger.admit(keys[0], bytes(key.verify_key), clock=ledger.next_clock(), address="ws://b:2")
    return ledger, keys, [node_id_for(bytes(k.verify_key)) for k in keys]


def test_membership_acknowledges_waits_and_finds_the_boundary() -> None:
    ledger, keys, ids = federation(4)
    hosts = [LedgerHost(ledger, key) for key in keys]
    views = [Membership(h, tuple(ids)) for h in hosts]  # type: ignore[arg-type]
    leaver = ids[3]
    ledger.leave(keys[3], 10, clock=ledger.next_clock())
    key = change_key(Kind.LEAVE, leaver)
    assert views[0].changes() == {key: leaver}
    views[0].acknowledge(4)
    assert hosts[0].records == [("acknowledged", {"round": 4, "changes": [key]})]
    views[0].acknowledge(6)  # once only
    assert len(hosts[0].records) == 1
    assert views[0].waiting(5) == [key] and views[0].waiting(4) == []
    assert views[0].horizon() == 11  # never before one past the leave's own round
    views[3].acknowledge(5)  # the leaver's record is its acknowledgement
    assert hosts[3].records == []
    views[1].acknowledge(5)
    views[2].acknowledge(12)
    assert views[0].waiting(5) == [] and views[0].horizon() is None
    epoch, _ = views[0].epoch_at(13)
    assert epoch.start == 13 and leaver not in epoch.members
    assert views[0].epoch_at(12)[0].number == 0


def test_frames_of_a_known_epoch_not_begun_wait_for_its_core() -> None:
    """A boundary every member acknowledged is no horizon of the ledger's, but until the
    node switches cores there, a neighbour's frames of that round must not reach the old
    epoch's core (a secure one would judge them by the old neighbourhood)."""
    ledger, keys, ids = federation(4)
    views = [Membership(LedgerHost(ledger, key), tuple(ids)) for key in keys]  # type: ignore[arg-type]
    ledger.leave(keys[3], 10, clock=ledger.next_clock())
    views[0].acknowledge(4)
    node = SimpleNamespace(membership=views[0], exchange=None)

    async def run() -> tuple[list[int | None], Core, Core]:
        old, new = Core("old"), Core("new")
        node.exchange = Exchange(Host(), old, secure=False, round=1)  # type: ignore[arg-type]
        horizons = [RoundEpochs.exchange_horizon(node)]  # type: ignore[arg-type]
        views[1].acknowledge(5)
        views[2].acknowledge(12)  # every member now: the boundary is round 13
        horizons.append(RoundEpochs.exchange_horizon(node))  # type: ignore[arg-type]
        node.exchange.set_horizon(horizons[-1])
        channel = int(node.exchange.channel)
        for index in (11, 12):  # rounds 12 and 13
            node.exchange.receive("p", channel, memoryview(gossip_frame(index)))
        assert old.fed == [11] and new.fed == []
        node.exchange.switch(new, 13)  # as RoundEpochs._switch does, then the new horizon
        horizons.append(RoundEpochs.exchange_horizon(node))  # type: ignore[arg-type]
        node.exchange.set_horizon(horizons[-1])
        return horizons, old, new

    horizons, old, new = asyncio.run(run())
    assert horizons == [11, 13, None]
    assert old.fed == [11] and new.fed == [12]


def test_a_revocation_does_not_move_a_boundary_fixed_before_it() -> None:
    ledger, keys, ids = federation(4)
    host = LedgerHost(ledger, keys[0])
    view = Membership(host, tuple(ids))  # type: ignore[arg-type]
    ledger.leave(keys[3], 2, clock=ledger.next_clock())
    key = change_key(Kind.LEAVE, ids[3])
    ledger.ack(keys[0], {key: 2}, clock=ledger.next_clock())
    ledger.ack(keys[1], {key: 2}, clock=ledger.next_clock())
    ledger.ack(keys[2], {key: 7}, clock=ledger.next_clock())  # the latest: it fixes round 8
    assert view.epoch_at(8)[0].start == 8
    ledger.revoke(keys[0], ids[2], clock=ledger.next_clock())
    assert ids[2] not in ledger.acks()  # its records left the ledger's view
    assert view.epoch_at(8)[0].start == 8  # remembered: the leave still takes effect at 8
    fresh = Membership(host, tuple(ids))  # type: ignore[arg-type]
    # A view of the ledger alone finds the leave pending again (the revoked member's
    # acknowledgement is missing): epoch 0 at round 8, the past rewritten.
    assert fresh.epoch_at(8)[0].number == 0 and key in fresh.refresh()[1]


# -- a joiner's start model ---------------------------------------------------------------


def test_control_messages_decode_or_are_refused() -> None:
    assert decode_control(memoryview(ask_model()), 3) == ("ask", None, None)
    kind, round_, model = decode_control(memoryview(model_reply(7, np.arange(3.0))), 3)
    assert (kind, round_) == ("model", 7) and model.tolist() == [0.0, 1.0, 2.0]
    for bad in (b"hello", model_reply(7, np.arange(4.0)), msgpack.packb({"ask": "keys"})):
        with pytest.raises(DecodeError):
            decode_control(memoryview(bad), 3)


def test_a_start_model_is_the_mean_of_answers_that_match_their_records() -> None:
    a, b = np.ones(3, np.float32), np.full(3, 3.0, np.float32)
    recorded = {"a": (9, model_digest(a)), "b": (9, model_digest(b))}
    replies = {"a": (9, a), "b": (9, b)}
    found = start_model(replies, recorded, ["a", "b"], earliest=9)
    assert found is not None and found[0] == 9 and found[1].tolist() == [2.0, 2.0, 2.0]
    assert start_model({"a": (9, a)}, recorded, ["a", "b"], 9) is None  # b not answered yet
    forged = {"a": (9, a), "b": (9, b + 1)}  # not the model b recorded
    assert start_model(forged, recorded, ["a", "b"], 9) is None
    assert start_model(replies, recorded, ["a", "b"], 10) is None  # older than the boundary
    stale = {"a": (9, a), "b": (8, b)}
    assert start_model(stale, {**recorded, "b": (8, model_digest(b))}, ["a", "b"], 8) is None


def test_membership_reads_the_roster_again_only_when_its_maps_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger, keys, ids = federation(4)
    view = Membership(LedgerHost(ledger, keys[0]), tuple(ids))  # type: ignore[arg-type]
    reads = []
    original = ledger.approvers
    monkeypatch.setattr(ledger, "approvers", lambda: reads.append(1) or original())
    assert view.changes() == {}
    for round_ in range(1, 6):  # what most ledger changes are
        for key in keys:
            ledger.report_progress(key, round_, clock=ledger.next_clock())
            assert view.changes() == {} and view.order() == tuple(sorted(ids))
    assert len(reads) == 1
    ledger.leave(keys[3], 10, clock=ledger.next_clock())
    assert view.changes() == {change_key(Kind.LEAVE, ids[3]): ids[3]}
    assert len(reads) == 2


def test_a_ledger_version_moves_with_its_maps_only() -> None:
    ledger, keys, _ = federation(3)
    before = ledger.version("progress", "approvals", "members")
    assert ledger.version("progress", "approvals", "members") == before
    ledger.report_progress(keys[1], 1, clock=ledger.next_clock())
    after = ledger.version("progress", "approvals", "members")
    assert after[0] > before[0] and after[1:] == before[1:]
    ledger.admit(
        keys[0], bytes(nacl.signing.SigningKey.generate().verify_key), clock=ledger.next_clock()
    )
    moved = ledger.version("progress", "approvals", "members")
    assert all(m > a for m, a in zip(moved, after, strict=True))  # who may write what changed
