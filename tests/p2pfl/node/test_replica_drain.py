"""A node's ledger frames are held until its loop turns and handled together
(``p2pfl.node.replica``): in arrival order, a flood's signatures checked in one batch,
the node's work after a change once per drain, and a revocation acted on before the
next frame. The node drains before another channel's frame (``Node._on_frame``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import nacl.signing
import pytest

from p2pfl.node import replica as replica_module
from p2pfl.node.channels import Channel, tagged
from p2pfl.node.config import config_from_table
from p2pfl.node.node import Node
from p2pfl.node.replica import PREPARED, Replica
from protocols.ledger import Ledger, node_id_for
from protocols.ledger_sync import LedgerSync, SyncStep1, Update

FOUNDER = nacl.signing.SigningKey(b"\x01" * 32)
MEMBERS = [nacl.signing.SigningKey(bytes([i]) * 32) for i in range(2, 6)]
IDS = [node_id_for(bytes(key.verify_key)) for key in MEMBERS]


class Wired:
    """A replica whose node is a log: what it was asked to do, in order."""

    def __init__(self) -> None:
        self.source = Ledger.found(FOUNDER, name="drain", nonce=b"n", client_id=1)
        for key in MEMBERS:
            self.source.admit(FOUNDER, bytes(key.verify_key), clock=self.source.next_clock())
        state = self.source.encode_state()
        self.ledger = Ledger.from_updates(self.source.federation_id, [state], client_id=2)
        self.sync = LedgerSync(self.ledger)
        for peer in ("source", *IDS):
            self.sync.connect(peer)
        self.log: list[str] = []
        self.refused: set[str] = set()
        self.replica = Replica(
            self.ledger,
            self.sync,
            send=lambda peer, frame: None,
            peer_error=lambda peer, error: self.log.append(f"error {peer}"),
            on_synced=lambda peer: True,
            on_change=self.changed,
            admits=lambda peer: peer not in self.refused,
            defer=lambda: self.log.append("defer"),
            on_frames=lambda: self.log.append("frames"),
        )

    def changed(self) -> None:
        self.log.append("change")
        self.refused = set(self.ledger.revoked())  # the node's gate, as ledger_changed does

    def progress(self, i: int, round_: int) -> bytes:
        update = self.source.report_progress(MEMBERS[i], round_, clock=self.source.next_clock())
        return Update(update).encode()


def test_frames_wait_for_the_drain_then_are_handled_in_order_with_one_change() -> None:
    wired = Wired()
    frames = [wired.progress(i % 4, 1 + i // 4) for i in range(8)]  # each member twice
    for frame in frames:
        wired.replica.take("source", memoryview(frame))
    assert wired.log == ["defer"]  # asked once, for the first held
    assert wired.ledger.progress() == {}
    wired.replica.drain()
    assert wired.ledger.progress() == wired.source.progress() == {n: 2 for n in IDS}
    assert wired.log == ["defer", "change", "frames"]  # the node's work once, not per frame
    wired.replica.drain()  # nothing held: nothing done
    assert wired.log == ["defer", "change", "frames"] and wired.replica.drains == 1


def test_a_burst_has_its_signatures_checked_ahead_together(monkeypatch: pytest.MonkeyPatch) -> None:
    wired = Wired()
    prepared: list[int] = []
    prepare = wired.sync.prepare
    monkeypatch.setattr(wired.sync, "prepare", lambda m: prepared.append(len(m)) or prepare(m))
    small = [wired.progress(i % 4, 1 + i // 4) for i in range(PREPARED - 1)]
    for frame in small:
        wired.replica.take("source", memoryview(frame))
    wired.replica.drain()
    assert prepared == []  # too few for two threads: checked one at a time as applied
    burst = [wired.progress(i % 4, 100 + i // 4) for i in range(PREPARED)]
    for frame in burst:
        wired.replica.take("source", memoryview(frame))
    wired.replica.drain()
    assert prepared == [PREPARED]
    assert wired.ledger.progress() == wired.source.progress()


def test_a_revocation_is_acted_on_before_the_next_frame_of_the_drain() -> None:
    wired = Wired()
    revoked = IDS[0]
    revocation = Update(wired.source.revoke(FOUNDER, revoked, clock=wired.source.next_clock()))
    late = wired.progress(1, 7)  # relayed by the revoked member's link, after its revocation
    wired.replica.take("source", memoryview(revocation.encode()))
    wired.replica.take(revoked, memoryview(late))
    wired.replica.drain()
    assert revoked in wired.ledger.revoked()
    assert wired.log == ["defer", "change", "frames"]
    assert wired.ledger.progress() == {}  # its link's frame was not handled


def test_what_waits_for_a_drain_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    wired = Wired()
    monkeypatch.setattr(replica_module, "MAX_HELD_FRAMES", 3)
    question = SyncStep1(wired.source.federation_id, wired.source.state_vector()).encode()
    for _ in range(3):
        wired.replica.take("source", memoryview(question))
    assert wired.replica.drains == 1 and wired.log == ["defer", "frames"]  # at the bound
    monkeypatch.setattr(replica_module, "MAX_HELD_BYTES", 2 * len(question))
    for _ in range(2):
        wired.replica.take("source", memoryview(question))
    assert wired.replica.drains == 2


def test_a_frame_received_at_once_comes_after_those_held() -> None:
    wired = Wired()
    first, second = wired.progress(0, 1), wired.progress(0, 2)
    wired.replica.take("source", memoryview(first))
    wired.replica.receive("source", memoryview(second))  # needs the first: same writer
    assert wired.ledger.progress() == {IDS[0]: 2}
    assert wired.log == ["defer", "change", "frames", "change", "frames"]


def test_another_channels_frame_drains_the_ledger_frames_before_it(tmp_path: Path) -> None:
    node = Node(config_from_table({"node": {"data_dir": str(tmp_path)}}, tmp_path))
    log: list[str] = []
    node._replica = SimpleNamespace(  # type: ignore[assignment]
        take=lambda peer, frame: log.append(f"take {bytes(frame).decode()}"),
        drain=lambda: log.append("drain"),
    )
    node._rounds = SimpleNamespace(  # type: ignore[assignment]
        on_frame=lambda peer, channel, body: log.append(f"round {bytes(body).decode()}")
    )
    node._on_frame("p", tagged(Channel.LEDGER, b"a"))
    node._on_frame("p", tagged(Channel.LEDGER, b"b"))
    node._on_frame("p", tagged(Channel.GOSSIP, b"c"))
    assert log == ["take a", "take b", "drain", "round c"]
    node._revoked = frozenset({"p"})
    node._on_frame("p", tagged(Channel.GOSSIP, b"d"))  # a revoked member's: refused
    assert log[-1] == "round c"
