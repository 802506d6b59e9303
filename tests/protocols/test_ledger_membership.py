"""The ledger's maps of membership over time: ``left`` (signed leaves) and ``acks``."""

from __future__ import annotations

import itertools

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import LocalProtocolError
from protocols.ledger import Ledger
from protocols.ledger_payloads import MAX_ACKS, check_payload, is_change_key
from protocols.records import node_id_for, open_record, seal

FORGED_CLOCKS = itertools.count(20_000)


def key(n: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(n.to_bytes(32, "big"))


def nid(signing_key: nacl.signing.SigningKey) -> str:
    return node_id_for(bytes(signing_key.verify_key))


F, A, B, C, OUT = key(1), key(2), key(3), key(4), key(9)


def federation() -> Ledger:
    """Founder F; admin A; members B and C."""
    ledger = Ledger.found(F, name="demo", nonce=b"n", client_id=1)
    ledger.admit(F, bytes(A.verify_key), clock=ledger.next_clock(), admin=True)
    ledger.admit(A, bytes(B.verify_key), clock=ledger.next_clock())
    ledger.admit(F, bytes(C.verify_key), clock=ledger.next_clock())
    return ledger


def forge(
    ledger: Ledger, signer: nacl.signing.SigningKey, map_name: str, slot: str, payload: object
) -> None:
    clock = next(FORGED_CLOCKS)
    ledger.insert_raw(map_name, *seal(signer, ledger.federation_id, map_name, slot, clock, payload))


def test_a_member_signs_its_leave_once() -> None:
    ledger = federation()
    assert ledger.left() == {}
    update = ledger.leave(B, 7, clock=ledger.next_clock())
    assert update and ledger.left() == {nid(B): 7}
    assert ledger.leave(B, 7, clock=ledger.next_clock()) == b""  # the same leave again
    with pytest.raises(LocalProtocolError, match="already leaves after round 7"):
        ledger.leave(B, 9, clock=ledger.next_clock())
    with pytest.raises(LocalProtocolError, match="round >= 0"):
        ledger.leave(C, -1, clock=ledger.next_clock())
    with pytest.raises(LocalProtocolError, match="not a member"):
        ledger.leave(OUT, 3, clock=ledger.next_clock())
    other = Ledger.from_updates(ledger.federation_id, [federation().encode_state()])
    other.apply_update(update)
    assert other.left() == {nid(B): 7}
    assert ledger.rejected_count == 0


def test_a_leave_counts_only_in_its_authors_slot_and_while_it_is_a_member() -> None:
    ledger = federation()
    forge(ledger, B, "left", nid(C), {"round": 3})  # B leaving in C's name
    forge(ledger, OUT, "left", nid(OUT), {"round": 3})  # not a member
    forge(ledger, C, "left", nid(C), {"round": -1})
    forge(ledger, C, "left", nid(C), {"round": 2, "why": "moving"})
    forge(ledger, C, "left", nid(C), {"round": True})
    assert ledger.left() == {}
    assert ledger.rejections() == {"not_authorized": 1, "unknown_author": 1, "malformed": 3}
    ledger.leave(C, 4, clock=ledger.next_clock())
    assert ledger.left() == {nid(C): 4}
    ledger.revoke(F, nid(C), clock=ledger.next_clock())
    assert ledger.left() == {}  # a revoked member's records are all void


def test_acks_merge_keeping_the_first_round_each_change_was_known() -> None:
    ledger = federation()
    join, leave = f"join:{nid(OUT)}", f"leave:{nid(C)}"
    assert ledger.acks() == {}
    assert ledger.ack(B, {join: 5}, clock=ledger.next_clock())
    assert ledger.ack(B, {join: 3, leave: 6}, clock=ledger.next_clock())
    assert ledger.acks() == {nid(B): {join: 3, leave: 6}}
    assert ledger.ack(B, {join: 4, leave: 6}, clock=ledger.next_clock()) is None  # nothing new
    assert ledger.ack(B, {}, clock=ledger.next_clock()) is None
    assert ledger.ack(A, {}, clock=ledger.next_clock()) is None
    update = ledger.ack(A, {leave: 2}, clock=ledger.next_clock())
    assert update is not None
    assert ledger.acks() == {nid(B): {join: 3, leave: 6}, nid(A): {leave: 2}}
    assert len(ledger.entries("acks")) == 2  # one live record per author
    other = Ledger.from_updates(ledger.federation_id, [ledger.encode_state()])
    assert other.acks() == ledger.acks() and other.rejected_count == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"join:nobody": 1}, "not a change key"),
        ({f"part:{'a' * 26}": 1}, "not a change key"),
        ({f"join:{'a' * 26}": -1}, "round >= 0"),
        ({f"join:{'a' * 26}": 1.0}, "round >= 0"),
    ],
)
def test_an_ack_refuses_what_no_reader_would_take(changes: dict[str, int], message: str) -> None:
    ledger = federation()
    with pytest.raises(LocalProtocolError, match=message):
        ledger.ack(B, changes, clock=ledger.next_clock())
    assert ledger.acks() == {}


def test_acks_are_bounded_in_number() -> None:
    ledger = federation()
    ids = [nid(key(i)) for i in range(100, MAX_ACKS + 101)]
    ledger.ack(B, {f"join:{n}": 1 for n in ids[:MAX_ACKS]}, clock=ledger.next_clock())
    assert len(ledger.acks()[nid(B)]) == MAX_ACKS
    with pytest.raises(LocalProtocolError, match=f"over {MAX_ACKS}"):
        ledger.ack(B, {f"join:{ids[-1]}": 1}, clock=ledger.next_clock())
    forge(ledger, C, "acks", nid(C), {"changes": {f"join:{n}": 1 for n in ids}})
    assert nid(C) not in ledger.acks() and ledger.rejections() == {"malformed": 1}


def test_acks_count_only_in_their_authors_slot_and_while_it_is_a_member() -> None:
    ledger = federation()
    good = {f"revoke:{nid(A)}": 1}
    forge(ledger, B, "acks", nid(C), {"changes": good})
    forge(ledger, OUT, "acks", nid(OUT), {"changes": good})
    forge(ledger, C, "acks", nid(C), {"changes": {"revoke:x": 1}})
    forge(ledger, C, "acks", nid(C), {"changes": {f"revoke:{nid(A)}": True}})
    forge(ledger, C, "acks", nid(C), {"changes": [f"revoke:{nid(A)}"]})
    assert ledger.acks() == {}
    assert ledger.rejections() == {"not_authorized": 1, "unknown_author": 1, "malformed": 3}
    ledger.ack(C, good, clock=ledger.next_clock())
    assert ledger.acks() == {nid(C): good}
    ledger.revoke(F, nid(C), clock=ledger.next_clock())
    assert ledger.acks() == {}


def test_change_keys_that_readers_take() -> None:
    node = nid(B)
    assert all(is_change_key(f"{kind}:{node}") for kind in ("join", "leave", "revoke"))
    for bad in (node, f"join:{node}:x", f"join:{node.upper()}", f"Join:{node}", "join:", 7, None):
        assert not is_change_key(bad)


ROUNDS = st.integers(-(2**63), 2**63 - 1)
KEYS = st.sampled_from([f"join:{nid(B)}", f"leave:{nid(C)}", "revoke:x"]) | st.text(max_size=40)


@settings(max_examples=80, deadline=None)
@given(
    st.one_of(
        st.dictionaries(KEYS, ROUNDS | st.booleans() | st.none(), max_size=4),
        ROUNDS,
        st.binary(max_size=8),
        st.lists(st.text(max_size=4), max_size=3),
    ),
    st.sampled_from(["acks", "left"]),
)
def test_any_payload_is_either_taken_or_malformed(changes: object, map_name: str) -> None:
    payload = {"changes": changes} if map_name == "acks" else {"round": changes}
    key, value = seal(B, "e" * 32, map_name, nid(B), 1, payload)
    record = open_record(map_name, key, value)
    taken = check_payload(record)
    if map_name == "left":
        assert taken == (type(changes) is int and changes >= 0)
    elif not isinstance(changes, dict):
        assert not taken
    else:
        ok = all(is_change_key(k) and type(v) is int and v >= 0 for k, v in changes.items())
        assert taken == ok
