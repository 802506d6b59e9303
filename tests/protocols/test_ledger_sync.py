"""Ledger sync: messages, the state-vector exchange, flooding without echo, anti-entropy.

``Net`` is an in-memory network of ``LedgerSync`` cores with one FIFO queue per
directed link; the stateful test reuses it.
"""

from __future__ import annotations

import contextlib
from collections import deque

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import DecodeError, LocalProtocolError, PeerProtocolError
from protocols.ledger import Ledger
from protocols.ledger_sync import LedgerSync, SyncStep1, SyncStep2, Update, decode
from protocols.records import canonical, node_id_for

FAST = settings(max_examples=200, deadline=None)


class Net:
    """Replicas ``0..n-1`` joined by links whose messages wait until delivered."""

    def __init__(self, ledgers: list[Ledger]) -> None:
        self.syncs = [LedgerSync(ledger) for ledger in ledgers]
        self.queues: dict[tuple[int, int], deque[bytes]] = {}
        self.delivered = 0

    @property
    def ledgers(self) -> list[Ledger]:
        return [sync.ledger for sync in self.syncs]

    def linked(self, i: int, j: int) -> bool:
        return (i, j) in self.queues

    def link(self, i: int, j: int) -> None:
        self.queues[(i, j)] = deque()
        self.queues[(j, i)] = deque()
        self.send(i, self.syncs[i].connect(str(j)))
        self.send(j, self.syncs[j].connect(str(i)))

    def unlink(self, i: int, j: int) -> None:
        """The link breaks: what was in flight is lost."""
        del self.queues[(i, j)], self.queues[(j, i)]
        self.syncs[i].disconnect(str(j))
        self.syncs[j].disconnect(str(i))

    def send(self, source: int, outgoing: list[tuple[str, bytes]]) -> None:
        for peer, data in outgoing:
            self.queues[(source, int(peer))].append(data)

    def write(self, i: int, update: bytes) -> None:
        self.send(i, self.syncs[i].local_update(update))

    def deliver(self, i: int, j: int) -> bool:
        queue = self.queues.get((i, j))
        if not queue:
            return False
        data = queue.popleft()
        self.delivered += 1
        self.send(j, self.syncs[j].receive(str(i), data))
        return True

    def drain(self, limit: int = 100_000) -> int:
        """Deliver until every queue is empty; fail if flooding does not stop."""
        count = 0
        while any(self.queues.values()):
            for i, j in list(self.queues):
                while self.deliver(i, j):
                    count += 1
                    assert count < limit, "flooding does not stop"
        return count

    def anti_entropy(self, i: int) -> None:
        self.send(i, self.syncs[i].anti_entropy())


FOUNDER = nacl.signing.SigningKey(b"\x01" * 32)
MEMBER = nacl.signing.SigningKey(b"\x02" * 32)


def replicas(n: int) -> list[Ledger]:
    genesis = Ledger.found(FOUNDER, name="sync", nonce=b"n", client_id=1000)
    genesis.admit(FOUNDER, bytes(MEMBER.verify_key), clock=genesis.next_clock())
    snapshot = genesis.encode_state()
    return [
        Ledger.from_updates(genesis.federation_id, [snapshot], client_id=i + 1) for i in range(n)
    ]


def test_messages_round_trip() -> None:
    for message in (SyncStep1("ab" * 16, b"\x00"), SyncStep2(b"\x00\x00"), Update(b"u")):
        assert decode(message.encode()) == message


@FAST
@given(st.binary(max_size=100))
def test_any_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data)


@pytest.mark.parametrize(
    "obj", [[], [9, b""], [0, "fid"], [0, 1, b""], [1, "text"], [2, b"", b""], {"a": 1}, ["x"]]
)
def test_well_formed_msgpack_of_the_wrong_shape_is_a_decode_error(obj: object) -> None:
    with pytest.raises(DecodeError):
        decode(canonical(obj))


def test_oversized_messages_are_refused() -> None:
    with pytest.raises(DecodeError):
        decode(Update(b"x" * 100).encode(), max_size=50)


def test_a_fresh_replica_catches_up_on_connect() -> None:
    ledgers = replicas(2)
    fresh = Ledger(ledgers[0].federation_id, client_id=50)
    net = Net([ledgers[0], fresh])
    net.link(0, 1)
    net.drain()
    assert fresh.members() == ledgers[0].members()


def test_updates_flood_without_echo_and_stop() -> None:
    ledgers = replicas(4)
    net = Net(ledgers)
    for i in range(4):  # a ring with a chord: cycles everywhere
        net.link(i, (i + 1) % 4)
    net.link(0, 2)
    net.drain()
    update = ledgers[1].report_progress(MEMBER, 3, clock=ledgers[1].next_clock())
    net.write(1, update)
    assert {j for (i, j), q in net.queues.items() if q} == {0, 2}
    net.deliver(1, 0)
    forwarded = {(i, j) for (i, j), q in net.queues.items() if q and i == 0}
    assert forwarded == {(0, 3), (0, 2)}  # never back to 1
    net.drain()
    assert all(ledger.progress() == {_member(): 3} for ledger in ledgers)
    assert sum(sync.duplicates for sync in net.syncs) > 0  # the cycles brought copies back


def _member() -> str:
    return node_id_for(bytes(MEMBER.verify_key))


def test_a_known_update_is_neither_applied_nor_forwarded() -> None:
    ledgers = replicas(3)
    sync = LedgerSync(ledgers[0])
    sync.connect("a")
    sync.connect("b")
    update = ledgers[1].report_progress(MEMBER, 1, clock=ledgers[1].next_clock())
    first = sync.receive("a", Update(update).encode())
    assert [peer for peer, _ in first] == ["b"]
    assert sync.receive("b", Update(update).encode()) == []
    known = ledgers[1].encode_state()
    assert sync.receive("b", Update(known).encode()) == []  # other bytes, nothing new
    assert sync.applied == 2 and sync.duplicates == 1


def test_anti_entropy_recovers_a_lost_message() -> None:
    ledgers = replicas(2)
    net = Net(ledgers)
    net.link(0, 1)
    net.drain()
    net.write(0, ledgers[0].report_progress(MEMBER, 7, clock=ledgers[0].next_clock()))
    net.queues[(0, 1)].clear()  # lost
    net.drain()
    assert ledgers[1].progress() == {}
    net.anti_entropy(1)
    net.drain()
    assert ledgers[1].progress() == {_member(): 7}


def test_peers_that_break_the_protocol_are_named() -> None:
    ledgers = replicas(1)
    sync = LedgerSync(ledgers[0])
    with pytest.raises(LocalProtocolError):
        sync.receive("stranger", b"")
    sync.connect("p")
    with pytest.raises(LocalProtocolError):
        sync.connect("p")
    with pytest.raises(PeerProtocolError) as info:
        sync.receive("p", b"\xc1")
    assert info.value.peer == "p"
    with pytest.raises(PeerProtocolError):
        sync.receive("p", SyncStep1("f" * 32, b"\x00").encode())  # another federation
    with pytest.raises(PeerProtocolError):
        sync.receive("p", SyncStep1(ledgers[0].federation_id, b"\xff\xff").encode())
    with pytest.raises(PeerProtocolError):
        sync.receive("p", Update(b"\x05garbage").encode())
    sync.disconnect("p")
    with pytest.raises(LocalProtocolError):
        sync.disconnect("p")


def test_a_reply_says_what_the_replier_holds_and_gets_what_it_lacks() -> None:
    """The state vector of a step 2 (``holds_own``): a leaving node learns its last
    records reached a neighbour, or sends them again when they did not."""
    net = Net(replicas(2))
    net.link(0, 1)
    net.drain()
    a, b = net.syncs
    assert a.holds_own("1") and b.holds_own("0")  # the connect exchange told each
    ledger = a.ledger
    third = bytes(nacl.signing.SigningKey(b"\x03" * 32).verify_key)
    net.write(0, ledger.admit(FOUNDER, third, clock=ledger.next_clock()))
    net.queues[(0, 1)].clear()  # the record dies in flight (a reset)
    assert not a.holds_own("1")
    net.send(0, a.ask(("1", "absent")))  # only linked peers are asked
    assert len(net.queues[(0, 1)]) == 1
    net.drain()  # the reply lacks it: the asker sends it with a step 2
    assert b.ledger.state_vector() == a.ledger.state_vector()
    assert not a.holds_own("1")  # sent, not yet known to have arrived
    net.send(0, a.ask(("1",)))
    net.drain()
    assert a.holds_own("1") and b.holds_own("0")


def test_a_reply_without_a_state_vector_still_decodes() -> None:
    """A step 2 of two fields (what peers sent before) is a step 2 that tells nothing."""
    assert decode(canonical([1, b"\x00\x00"])) == SyncStep2(b"\x00\x00")
    with_vector = SyncStep2(b"\x00\x00", b"\x00")
    assert decode(with_vector.encode()) == with_vector
    with pytest.raises(DecodeError):
        decode(canonical([1, b"\x00\x00", 5]))
