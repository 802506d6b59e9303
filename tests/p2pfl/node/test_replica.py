"""The ledger channel of a node (``p2pfl.node.replica``): a change is reported once per
frame that changed the replica, and telling so costs no encoding of the state vector."""

from __future__ import annotations

import nacl.signing
import pytest
from pycrdt import Map

from p2pfl.node.replica import Replica
from protocols.ledger import Ledger
from protocols.ledger_sync import LedgerSync, SyncStep1, Update

FOUNDER = nacl.signing.SigningKey(b"\x01" * 32)
MEMBER = nacl.signing.SigningKey(b"\x02" * 32)


@pytest.fixture
def pair() -> tuple[Ledger, Replica, list[str], list[tuple[str, bytes]]]:
    source = Ledger.found(FOUNDER, name="replica", nonce=b"n", client_id=1)
    source.admit(FOUNDER, bytes(MEMBER.verify_key), clock=source.next_clock())
    ledger = Ledger.from_updates(source.federation_id, [source.encode_state()], client_id=2)
    sync = LedgerSync(ledger)
    sync.connect("source")
    events: list[str] = []
    sent: list[tuple[str, bytes]] = []
    replica = Replica(
        ledger,
        sync,
        send=lambda peer, frame: sent.append((peer, frame)),
        peer_error=lambda peer, error: events.append(f"error {error}"),
        on_synced=lambda peer: True,
        on_change=lambda: events.append("change"),
    )
    return source, replica, events, sent


def test_a_change_is_reported_once_and_a_copy_not(
    pair: tuple[Ledger, Replica, list[str], list[tuple[str, bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, replica, events, _ = pair
    encoded: list[int] = []
    original = replica.ledger.state_vector
    monkeypatch.setattr(replica.ledger, "state_vector", lambda: encoded.append(1) or original())
    frame = Update(source.report_progress(MEMBER, 1, clock=source.next_clock())).encode()
    replica.receive("source", memoryview(frame))
    assert events == ["change"]
    assert not encoded  # O(writers) to encode: not once per frame
    replica.receive("source", memoryview(frame))  # a copy by another path
    assert events == ["change"]
    assert replica.ledger.progress() == source.progress()


def test_a_deletion_alone_is_a_change(
    pair: tuple[Ledger, Replica, list[str], list[tuple[str, bytes]]],
) -> None:
    source, replica, events, _ = pair
    junk = Update(source.insert_raw("progress", "x@1", b"not a record")).encode()
    replica.receive("source", memoryview(junk))
    assert events == ["change"] and replica.ledger.rejected_count == 1
    state = source.doc.get_state()
    with source.doc.transaction():
        del source.doc.get("progress", type=Map)["x@1"]
    deletion = Update(bytes(source.doc.get_update(state))).encode()
    replica.receive("source", memoryview(deletion))  # no new item: the state vector stays
    assert events == ["change", "change"] and replica.ledger.rejected_count == 0


def test_a_question_changes_nothing(
    pair: tuple[Ledger, Replica, list[str], list[tuple[str, bytes]]],
) -> None:
    source, replica, events, sent = pair
    step1 = SyncStep1(source.federation_id, source.state_vector()).encode()
    replica.receive("source", memoryview(step1))
    assert events == [] and [peer for peer, _ in sent] == ["source"]
