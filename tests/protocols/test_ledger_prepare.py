"""Signatures checked ahead in one batch: a burst of updates (``LedgerSync.prepare``) and an
update that changes many entries at once (a sync's reply) each cost one batch of checks, and
the views are those of checking one record at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import nacl.signing
import pytest

from protocols import ledger_doc, records
from protocols.errors import LocalProtocolError, PeerProtocolError
from protocols.ledger import Ledger
from protocols.ledger_sync import LedgerSync, SyncStep1, Update, decode
from protocols.records import node_id_for, seal

FOUNDER = nacl.signing.SigningKey(b"\x01" * 32)
MEMBERS = [nacl.signing.SigningKey(bytes([i]) * 32) for i in range(2, 10)]


class Batches:
    """A ``checks`` map that notes the size of every batch it runs."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, fn: Callable[[Any], bool], items: list[Any]) -> list[bool]:
        self.sizes.append(len(items))
        return [fn(item) for item in items]


@pytest.fixture
def verified(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The author of every signature checked, in order."""
    seen: list[str] = []
    original = records.Record.verifies

    def counting(self: records.Record, federation_id: str, verify_key: bytes) -> bool:
        seen.append(self.author)
        return original(self, federation_id, verify_key)

    monkeypatch.setattr(records.Record, "verifies", counting)
    yield seen


def federation() -> Ledger:
    ledger = Ledger.found(FOUNDER, name="ahead", nonce=b"n", client_id=1000)
    for key in MEMBERS:
        ledger.admit(FOUNDER, bytes(key.verify_key), clock=ledger.next_clock())
    return ledger


def replica(source: Ledger, checks: Batches | None = None) -> tuple[Ledger, LedgerSync]:
    ledger = Ledger.from_updates(
        source.federation_id, [source.encode_state()], client_id=7, checks=checks or map
    )
    ledger.members()  # the first view, judged before anything is prepared
    sync = LedgerSync(ledger)
    sync.connect("source")
    return ledger, sync


def progress_burst(source: Ledger, rounds: int = 2) -> list[bytes]:
    """One wire message per progress record, every member, ``rounds`` rounds."""
    return [
        Update(source.report_progress(key, r, clock=source.next_clock())).encode()
        for r in range(1, rounds + 1)
        for key in MEMBERS
    ]


def test_a_prepared_burst_is_checked_in_one_batch_and_once(verified: list[str]) -> None:
    source = federation()
    checks = Batches()
    ledger, sync = replica(source, checks)
    plain, plain_sync = replica(source)
    burst = progress_burst(source)
    verified.clear()
    sync.prepare(burst + burst[:3])  # copies are checked once
    assert checks.sizes[-1] == len(burst)
    assert len(verified) == len(burst)
    for message in burst:
        sync.receive("source", message)
        plain_sync.receive("source", message)
    assert len(verified) == 2 * len(burst)  # the plain replica's, one at a time; none more here
    assert ledger.view() == plain.view()
    assert ledger.progress() == {node_id_for(bytes(k.verify_key)): 2 for k in MEMBERS}


def test_decoded_messages_are_prepared_and_handled_as_their_bytes_are(
    verified: list[str],
) -> None:
    source = federation()
    checks = Batches()
    ledger, sync = replica(source, checks)
    plain, plain_sync = replica(source)
    burst = progress_burst(source)
    decoded = [decode(message) for message in burst]
    sync.connect("n1")
    plain_sync.connect("n1")  # a neighbour to forward to: the outputs compared are not empty
    verified.clear()
    sync.prepare(decoded)  # what a node's drain hands over: decoded once, for its kind too
    assert checks.sizes[-1] == len(burst) and len(verified) == len(burst)
    for message, data in zip(decoded, burst, strict=True):
        out = sync.handle("source", message)
        assert out == plain_sync.receive("source", data) and [p for p, _ in out] == ["n1"]
    assert len(verified) == 2 * len(burst)
    assert ledger.view() == plain.view()
    with pytest.raises(LocalProtocolError):
        sync.handle("stranger", decoded[0])


def test_a_forged_record_in_a_prepared_burst_is_still_refused() -> None:
    source = federation()
    ledger, sync = replica(source)
    victim = node_id_for(bytes(MEMBERS[0].verify_key))
    key, value = seal(MEMBERS[0], source.federation_id, "progress", victim, 99, {"round": 50})
    forged = value[:-1] + bytes([value[-1] ^ 1])  # one bit of the signature flipped
    burst = progress_burst(source, rounds=1)
    burst.append(Update(source.insert_raw("progress", key, forged)).encode())
    sync.prepare(burst)
    for message in burst:
        sync.receive("source", message)
    assert ledger.progress()[victim] == 1
    assert ledger.rejections().get("bad_signature") == 1


def test_what_does_not_decode_is_left_to_receive() -> None:
    source = federation()
    ledger, sync = replica(source)
    burst = [b"\xff\x00", Update(b"\x01\x02\x03").encode(), *progress_burst(source, rounds=1)]
    sync.prepare(burst)
    for bad in burst[:2]:
        with pytest.raises(PeerProtocolError):
            sync.receive("source", bad)
    for message in burst[2:]:
        sync.receive("source", message)
    assert set(ledger.progress().values()) == {1}


def test_updates_read_ahead_and_never_applied_are_not_kept_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ledger_doc, "MAX_AHEAD", 4)
    source = federation()
    ledger, _ = replica(source)
    update = source.report_progress(MEMBERS[0], 1, clock=source.next_clock())
    for i in range(20):
        ledger.store.values_in(update + i.to_bytes(4, "big"))  # not updates: not kept
    assert not ledger.store._ahead
    never = [source.report_progress(MEMBERS[0], r, clock=source.next_clock()) for r in range(9)]
    for one in never:
        ledger.store.values_in(one)
        assert 0 < len(ledger.store._ahead) <= 4
    distinct = [
        source.report_progress(MEMBERS[1], r, clock=source.next_clock()) for r in range(1, 4)
    ]
    for one in distinct:
        ledger.store.values_in(one)
    for one in distinct:
        ledger.apply_update(one)  # applied: its walk is taken, not kept
    assert not any(one in ledger.store._ahead for one in distinct)
    assert ledger.progress()[node_id_for(bytes(MEMBERS[1].verify_key))] == 3


def test_a_reply_that_changes_many_entries_is_checked_in_one_batch() -> None:
    source = federation()
    checks = Batches()
    ledger, sync = replica(source, checks)
    progress_burst(source)  # written at the source, not sent: the replica is behind
    before = len(checks.sizes)
    step1 = SyncStep1(ledger.federation_id, ledger.state_vector()).encode()
    far = LedgerSync(source)
    far.connect("replica")
    ((_, reply),) = far.receive("replica", step1)
    sync.receive("source", reply)
    assert checks.sizes[before:] == [len(MEMBERS)]  # the newest record of each member, at once
    assert ledger.progress() == source.progress()


def test_a_first_view_examines_the_member_records_in_one_batch() -> None:
    """A member record's box key costs nearly a signature check to derive: the first view
    derives them all in one batch (``checks``: on the free cores, in a node)."""
    source = federation()
    checks = Batches()
    batched = Ledger.from_updates(source.federation_id, [source.encode_state()], checks=checks)
    plain = Ledger.from_updates(source.federation_id, [source.encode_state()])
    assert batched.view() == plain.view()
    members = len(source.entries("members"))
    assert members == len(MEMBERS) + 1
    assert checks.sizes == [members, members]  # examined in one batch, then their signatures
    checks.sizes.clear()
    batched.admit(FOUNDER, bytes(nacl.signing.SigningKey(b"\x42" * 32).verify_key), clock=99)
    assert checks.sizes == [1]  # a rebuild examines only what is new: one, in its turn
