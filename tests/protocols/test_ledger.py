"""The ledger's rules: who may write what, and what readers do with everything else."""

from __future__ import annotations

import contextlib
import itertools

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Map

from protocols.errors import DecodeError, LocalProtocolError
from protocols.ledger import Ledger
from protocols.records import canonical, node_id_for, plan_hash, seal

FAST = settings(max_examples=40, deadline=None)
FORGED_CLOCKS = itertools.count(10_000)  # forgeries never reuse a key


def key(n: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes([n]) * 32)


def nid(signing_key: nacl.signing.SigningKey) -> str:
    return node_id_for(bytes(signing_key.verify_key))


F, A, B, C, OUT = key(1), key(2), key(3), key(4), key(9)
PLAN = {"model": "mlp", "rounds": 5, "optimizer": {"lr": 0.05}}


def federation() -> Ledger:
    """Founder F; admin A; members B and C (B admitted by A); a plan."""
    ledger = Ledger.found(F, name="demo", nonce=b"n", address="wss://f:1", client_id=1)
    ledger.admit(F, bytes(A.verify_key), clock=ledger.next_clock(), admin=True)
    ledger.admit(A, bytes(B.verify_key), clock=ledger.next_clock(), address="wss://b:1")
    ledger.admit(F, bytes(C.verify_key), clock=ledger.next_clock())
    ledger.set_plan(F, PLAN, clock=ledger.next_clock())
    return ledger


def forge(
    ledger: Ledger,
    signer: nacl.signing.SigningKey,
    map_name: str,
    slot: str,
    payload: object,
    *,
    federation_id: str | None = None,
) -> None:
    fid = ledger.federation_id if federation_id is None else federation_id
    clock = next(FORGED_CLOCKS)
    ledger.insert_raw(map_name, *seal(signer, fid, map_name, slot, clock, payload))


def test_found_derives_the_federation_id_from_the_genesis_record() -> None:
    ledger = Ledger.found(F, name="demo", nonce=b"n", client_id=1)
    assert ledger.founder == nid(F) and ledger.name == "demo"
    assert len(ledger.federation_id) == 32
    assert Ledger.found(F, name="demo", nonce=b"m").federation_id != ledger.federation_id
    assert ledger.members()[nid(F)].admin
    assert ledger.rejected_count == 0


def test_a_replica_with_another_federation_id_sees_nothing() -> None:
    ledger = federation()
    other = Ledger.from_updates("f" * 32, [ledger.encode_state()])
    assert other.founder is None and other.members() == {}
    assert other.rejections() == {"unknown_author": ledger.rejected_count + 5}


def test_views_of_a_small_federation() -> None:
    ledger = federation()
    assert set(ledger.members()) == {nid(F), nid(A), nid(B), nid(C)}
    assert ledger.members()[nid(B)].inviter == nid(A)
    assert ledger.members()[nid(A)].admin and not ledger.members()[nid(B)].admin
    assert ledger.plan() == PLAN and ledger.plan_hash() == plan_hash(PLAN)
    ledger.plan()["optimizer"]["lr"] = 1.0  # type: ignore[index]  # a copy
    assert ledger.plan() == PLAN
    ledger.approve(B, plan_hash(PLAN), clock=ledger.next_clock())
    ledger.report_progress(B, 4, clock=ledger.next_clock(), digest=b"d" * 32)
    ledger.declare_dropouts(C, 4, [nid(B)], clock=ledger.next_clock())
    ledger.publish_metrics(C, 4, {"loss": 0.5, "n": 10}, clock=ledger.next_clock())
    assert ledger.approvers() == {nid(B)}
    assert ledger.progress() == {nid(B): 4}
    assert ledger.secagg(4) == {nid(C): frozenset({nid(B)})} and ledger.secagg(5) == {}
    assert ledger.metrics(4) == {nid(C): {"loss": 0.5, "n": 10}}
    assert isinstance(ledger.metrics(4)[nid(C)]["n"], int)
    ledger.publish_metrics(B, 5, {"loss": 0.25, "n": 3}, clock=ledger.next_clock())
    assert ledger.metrics_by_round() == {4: ledger.metrics(4), 5: ledger.metrics(5)}
    assert ledger.metrics_by_round(skip={4}) == {5: {nid(B): {"loss": 0.25, "n": 3}}}
    assert ledger.box_key(nid(B)) == bytes(B.to_curve25519_private_key().public_key)
    assert ledger.box_key(nid(OUT)) is None
    assert ledger.rejected_count == 0


def test_a_writer_keeps_one_live_record_per_slot() -> None:
    ledger = federation()
    for round_ in range(5):
        ledger.report_progress(B, round_, clock=ledger.next_clock())
    assert [k for k in ledger.entries("progress")] == [f"{nid(B)}@{ledger.next_clock() - 1}"]
    assert ledger.progress() == {nid(B): 4}


def test_a_progress_update_is_small() -> None:
    ledger = federation()
    ledger.report_progress(B, 1, clock=ledger.next_clock())
    update = ledger.report_progress(B, 2, clock=ledger.next_clock(), digest=b"d" * 32)
    assert len(update) < 300


def test_local_misuse_is_refused_before_anything_is_written() -> None:
    ledger = federation()
    before = ledger.encode_state()
    with pytest.raises(LocalProtocolError):
        ledger.admit(B, bytes(OUT.verify_key), clock=ledger.next_clock())  # not an admin
    with pytest.raises(LocalProtocolError):
        ledger.admit(A, bytes(OUT.verify_key), clock=ledger.next_clock(), admin=True)
    with pytest.raises(LocalProtocolError):
        ledger.revoke(A, nid(F), clock=ledger.next_clock())
    with pytest.raises(LocalProtocolError):
        ledger.revoke(F, nid(F), clock=ledger.next_clock())
    with pytest.raises(LocalProtocolError):
        ledger.set_plan(A, {"x": 1}, clock=ledger.next_clock())
    with pytest.raises(LocalProtocolError):
        ledger.report_progress(OUT, 1, clock=ledger.next_clock())
    ledger.report_progress(B, 2, clock=ledger.next_clock())
    with pytest.raises(LocalProtocolError):
        ledger.report_progress(B, 3, clock=1)  # below the slot's current clock
    assert ledger.encode_state() != before  # only the valid write happened
    assert ledger.rejected_count == 0


def test_tampered_and_misplaced_records_are_rejected_and_counted() -> None:
    ledger = federation()
    ledger.report_progress(B, 1, clock=ledger.next_clock())
    progress = ledger.entries("progress")
    (good_key,) = progress.keys()
    flipped = bytearray(progress[good_key])
    flipped[-1] ^= 0xFF
    ledger.insert_raw("progress", good_key, bytes(flipped))
    forge(ledger, B, "progress", nid(C), {"round": 9})  # B signs in C's namespace
    forge(ledger, OUT, "progress", nid(OUT), {"round": 9})  # not a member
    forge(ledger, B, "progress", nid(B), {"round": 9}, federation_id="e" * 32)
    forge(ledger, B, "progress", nid(B), {"round": "nine"})
    ledger.insert_raw("progress", "garbage", b"\x00")
    ledger.insert_raw("metrics", f"1/{nid(B)}@99", b"not a record at all" * 5)
    assert ledger.progress() == {nid(B): 1}  # the verified record was put back over the flip
    assert bytes(ledger.entries("progress")[good_key]) == bytes(progress[good_key])
    assert [(v.key, v.kind) for v in ledger.take_violations()] == [(good_key, "overwritten")]
    assert ledger.rejections() == {
        "bad_signature": 1,
        "not_authorized": 1,
        "unknown_author": 1,
        "malformed": 3,
    }
    assert ledger.rejected_count == 6


def test_a_replayed_old_record_never_hides_the_newer_one() -> None:
    ledger = federation()
    ledger.report_progress(B, 1, clock=ledger.next_clock())
    (old_key,) = ledger.entries("progress")
    old_value = bytes(ledger.entries("progress")[old_key])
    ledger.report_progress(B, 2, clock=ledger.next_clock())
    ledger.insert_raw("progress", old_key, old_value)  # back after being pruned
    assert ledger.progress() == {nid(B): 2}
    assert ledger.rejected_count == 0  # stale, not forged
    ledger.insert_raw("progress", old_key.replace(nid(B), nid(C)), old_value)  # another slot
    assert ledger.progress() == {nid(B): 2} and ledger.rejections() == {"bad_signature": 1}


def test_a_spoilt_or_deleted_current_record_is_put_back() -> None:
    ledger = federation()
    ledger.report_progress(B, 1, clock=ledger.next_clock())
    (old_key,) = ledger.entries("progress")
    old_value = bytes(ledger.entries("progress")[old_key])  # type: ignore[arg-type]
    ledger.report_progress(B, 2, clock=ledger.next_clock())
    (new_key,) = ledger.entries("progress")
    new_value = bytes(ledger.entries("progress")[new_key])  # type: ignore[arg-type]
    ledger.insert_raw("progress", old_key, old_value)  # a replay brings round 1 back, stale
    assert ledger.progress() == {nid(B): 2}
    ledger.insert_raw("progress", new_key, b"spoilt" * 20)  # overwrites round 2 in place
    assert ledger.progress() == {nid(B): 2} and ledger.rejected_count == 0
    assert ledger.entries("progress")[new_key] == new_value
    ledger.doc.get("progress", type=Map).pop(new_key)
    assert ledger.progress() == {nid(B): 2} and ledger.rejected_count == 0
    assert [(v.key, v.kind, v.author) for v in ledger.take_violations()] == [
        (new_key, "overwritten", nid(B)),
        (new_key, "deleted", nid(B)),
    ]


def test_nobody_writes_after_being_revoked() -> None:
    ledger = federation()
    ledger.report_progress(C, 1, clock=ledger.next_clock())
    ledger.revoke(F, nid(C), clock=ledger.next_clock(), reason="left")
    assert nid(C) not in ledger.members() and nid(C) in ledger.revoked()
    assert ledger.members(include_revoked=True)[nid(C)].revoked
    forge(ledger, C, "progress", nid(C), {"round": 2})
    assert ledger.progress() == {}
    assert ledger.rejections() == {"revoked": 2}
    assert ledger.box_key(nid(C)) is None
    ledger.admit(F, bytes(C.verify_key), clock=ledger.next_clock())  # revocation is permanent
    assert nid(C) not in ledger.members()


def test_revoking_an_admin_voids_its_admissions_and_revocations() -> None:
    ledger = federation()
    ledger.report_progress(B, 1, clock=ledger.next_clock())
    ledger.revoke(A, nid(C), clock=ledger.next_clock())
    assert nid(C) in ledger.revoked()
    ledger.revoke(F, nid(A), clock=ledger.next_clock())
    assert set(ledger.members()) == {nid(F), nid(C)}
    assert set(ledger.revoked()) == {nid(A)}
    assert ledger.progress() == {}
    ledger.admit(F, bytes(B.verify_key), clock=ledger.next_clock())  # the founder re-admits B
    assert ledger.progress() == {nid(B): 1}


def test_admins_cannot_touch_admins_and_forged_grants_fail() -> None:
    ledger = federation()
    forge(ledger, A, "members", nid(OUT), _member_payload(OUT, admin=True))
    forge(ledger, A, "revoked", nid(F), {"reason": ""})
    forge(ledger, B, "members", nid(OUT), _member_payload(OUT, admin=False))
    forge(ledger, B, "plan", "plan", {"plan": {"evil": True}})
    assert nid(OUT) not in ledger.members() and ledger.revoked() == {}
    assert ledger.plan() == PLAN
    assert ledger.rejections() == {"not_authorized": 4}


def test_member_records_bind_the_node_id_and_box_key_to_the_verify_key() -> None:
    ledger = federation()
    forge(ledger, F, "members", nid(B), _member_payload(OUT, admin=False))  # OUT's key, B's id
    wrong_box = _member_payload(OUT, admin=False) | {"box_key": b"\x00" * 32}
    forge(ledger, F, "members", nid(OUT), wrong_box)
    assert ledger.members()[nid(B)].verify_key == bytes(B.verify_key)
    assert nid(OUT) not in ledger.members()
    assert ledger.rejections() == {"malformed": 2}


def _member_payload(signing_key: nacl.signing.SigningKey, *, admin: bool) -> dict[str, object]:
    verify_key = bytes(signing_key.verify_key)
    return {
        "verify_key": verify_key,
        "box_key": bytes(signing_key.verify_key.to_curve25519_public_key()),
        "address": "",
        "institution": "",
        "admin": admin,
    }


def test_non_bytes_values_from_a_peer_are_malformed_not_a_crash() -> None:
    ledger = federation()
    ledger.doc.get("progress", type=Map)["x@1"] = "a string"
    ledger.doc.get("progress", type=Map)["y@1"] = 3
    assert ledger.rejections() == {"malformed": 2}


def test_state_round_trips_through_updates() -> None:
    ledger = federation()
    ledger.report_progress(B, 3, clock=ledger.next_clock())
    copy = Ledger.from_updates(ledger.federation_id, [ledger.encode_state()], client_id=2)
    assert copy.members() == ledger.members() and copy.progress() == ledger.progress()
    assert copy.diff(ledger.state_vector()) == copy.diff(copy.state_vector())
    with pytest.raises(DecodeError):
        copy.apply_update(b"\x01\x02garbage")
    with pytest.raises(DecodeError):
        copy.diff(b"\xff\xff\xff")


def test_apply_update_reports_only_what_changed() -> None:
    ledger = federation()
    copy = Ledger.from_updates(ledger.federation_id, [ledger.encode_state()], client_id=2)
    update = ledger.report_progress(B, 3, clock=ledger.next_clock())
    assert copy.apply_update(update) != []
    assert copy.apply_update(update) == []
    assert copy.apply_update(ledger.encode_state()) == []


@FAST
@given(st.binary(max_size=200))
def test_any_bytes_as_an_update_apply_or_raise_decode_error(data: bytes) -> None:
    ledger = Ledger("0" * 32, client_id=5)
    with contextlib.suppress(DecodeError):
        ledger.apply_update(data)
    assert ledger.members() == {}  # and reading never crashes


def test_set_plan_refuses_what_cannot_be_encoded() -> None:
    ledger = federation()
    with pytest.raises(LocalProtocolError):
        ledger.set_plan(F, {"when": object()}, clock=ledger.next_clock())
    assert canonical(ledger.plan()) == canonical(PLAN)


def test_the_plan_hash_follows_the_current_plan_and_survives_a_caller_changing_its_copy() -> None:
    ledger = federation()
    assert ledger.plan_hash() == plan_hash(PLAN)
    copy_ = ledger.plan()
    assert copy_ is not None
    copy_["rounds"] = 99  # a caller's copy: the ledger's plan and its hash stay as they were
    assert ledger.plan_hash() == plan_hash(PLAN) and ledger.plan() == PLAN
    new_plan = {**PLAN, "rounds": 6}
    ledger.set_plan(F, new_plan, clock=ledger.next_clock())
    assert ledger.plan_hash() == plan_hash(new_plan) != plan_hash(PLAN)
    replica = Ledger(ledger.federation_id, client_id=7)
    assert replica.plan_hash() is None
    replica.apply_update(ledger.encode_state())
    assert replica.plan_hash() == plan_hash(new_plan)


def test_a_whole_view_checks_its_signatures_in_batches_through_the_given_map() -> None:
    source = federation()
    for signer in (B, C):
        source.report_progress(signer, 1, clock=source.next_clock())
    forge(source, B, "progress", nid(B), {"round": 2}, federation_id="e" * 32)  # bad signature
    forge(source, OUT, "members", nid(OUT), _member_payload(OUT, admin=False))  # not an admin
    batches: list[int] = []

    def recording_map(fn, items):  # type: ignore[no-untyped-def]
        batches.append(len(items))
        return [fn(item) for item in items]

    state = source.encode_state()
    batched = Ledger.from_updates(source.federation_id, [state], checks=recording_map)
    serial = Ledger.from_updates(source.federation_id, [state])
    assert batched.view() == serial.view()
    assert batched.rejections() == serial.rejections() == {"bad_signature": 1, "unknown_author": 1}
    # the 5 member records examined (their box keys derived), their signatures and the
    # revocations' (OUT's among them: its signer is known, so it is checked), then the
    # namespace maps (plan and 3 progress)
    assert batches == [5, 5, 4]
    assert batched.progress() == {nid(B): 1, nid(C): 1}


def test_members_follow_the_roster_and_are_the_callers_to_change() -> None:
    founder = nacl.signing.SigningKey(b"\x01" * 32)
    member = nacl.signing.SigningKey(b"\x02" * 32)
    ledger = Ledger.found(founder, name="roster", nonce=b"n")
    node_id = node_id_for(bytes(member.verify_key))
    first = ledger.members()
    first.clear()  # a copy: the ledger's own is untouched
    assert set(ledger.members()) == {ledger.founder}
    ledger.admit(founder, bytes(member.verify_key), clock=ledger.next_clock())
    assert set(ledger.members()) == {ledger.founder, node_id}
    assert ledger.box_key(node_id) == ledger.members()[node_id].box_key
    ledger.revoke(founder, node_id, clock=ledger.next_clock())
    assert set(ledger.members()) == {ledger.founder}
    assert node_id in ledger.members(include_revoked=True)
    assert ledger.box_key(node_id) is None and ledger.verify_key(node_id) is None
