"""Signed records: node ids, canonical encoding, and what a signature binds."""

from __future__ import annotations

import contextlib

import msgpack
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import records
from protocols.errors import DecodeError, LocalProtocolError
from protocols.records import (
    canonical,
    node_id_for,
    open_record,
    parse_key,
    parse_round_slot,
    seal,
    unpack,
)

FAST = settings(max_examples=60, deadline=None)
KEY = nacl.signing.SigningKey(b"\x01" * 32)
OTHER = nacl.signing.SigningKey(b"\x02" * 32)
FID = "0" * 32


def test_node_id_is_a_stable_26_char_base32_hash_of_the_verify_key() -> None:
    node_id = node_id_for(bytes(KEY.verify_key))
    assert node_id == node_id_for(bytes(KEY.verify_key))
    assert len(node_id) == 26 and records.is_node_id(node_id)
    assert node_id != node_id_for(bytes(OTHER.verify_key))
    with pytest.raises(LocalProtocolError):
        node_id_for(b"short")


def test_box_key_is_libsodiums_conversion() -> None:
    expected = bytes(KEY.verify_key.to_curve25519_public_key())
    assert records.box_key_for(bytes(KEY.verify_key)) == expected
    assert bytes(KEY.to_curve25519_private_key().public_key) == expected


def test_canonical_sorts_maps_and_normalises_sequences() -> None:
    assert canonical({"b": 1, "a": (1, 2)}) == canonical({"a": [1, 2], "b": 1})
    assert canonical({"x": bytearray(b"ab")}) == canonical({"x": b"ab"})
    with pytest.raises(LocalProtocolError):
        canonical({1: "int key"})
    with pytest.raises(LocalProtocolError):
        canonical({"set": {1, 2}})


@FAST
@given(st.binary(max_size=200))
def test_unpack_returns_or_raises_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        unpack(data)


def test_unpack_refuses_extension_types_and_oversized_input() -> None:
    with pytest.raises(DecodeError):
        unpack(b"\xd6\xff\x00\x00\x00\x01")  # a msgpack timestamp
    with pytest.raises(DecodeError):
        unpack(b"\xd4\x01\x02")  # ext type 1
    with pytest.raises(DecodeError):
        unpack(b"\xc0" * 11, max_size=10)


EXTENSIONS = [
    b"\xc7\x00\x01",  # an empty extension of type 1: refused by the hook, not its length
    b"\xc7\x00\xff",  # an empty timestamp
    msgpack.packb(msgpack.ExtType(5, b"x" * 300)),
    msgpack.packb(msgpack.Timestamp(1, 0)),  # 32, 64 and 96 bits
    msgpack.packb(msgpack.Timestamp(1, 5)),
    msgpack.packb(msgpack.Timestamp(2**40, 5)),
]


@FAST
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=8,
    ),
    st.sampled_from(EXTENSIONS),
    st.integers(0, 3),
)
def test_unpack_refuses_an_extension_type_wherever_it_sits(
    plain: object, extension: bytes, depth: int
) -> None:
    """msgpack's decoder refuses them itself (nothing walks the result again): at the
    top, in a list, as a map's value, at any depth; plain data round-trips."""
    packed = msgpack.packb(plain, use_bin_type=True)
    assert unpack(packed) == plain
    wrapped = extension
    for level in range(depth):  # [plain, ...] or {"k": ...}
        wrapped = b"\x92" + packed + wrapped if level % 2 else b"\x81\xa1k" + wrapped
    with pytest.raises(DecodeError):
        unpack(wrapped)


def test_seal_then_open_round_trips_and_verifies() -> None:
    key, value = seal(KEY, FID, "progress", "slot", 7, {"round": 3})
    assert key == "slot@7"
    record = open_record("progress", key, value)
    assert (record.author, record.clock, record.payload) == (
        node_id_for(bytes(KEY.verify_key)),
        7,
        {"round": 3},
    )
    assert record.verifies(FID, bytes(KEY.verify_key))
    assert not record.verifies(FID, bytes(OTHER.verify_key))


@pytest.mark.parametrize(
    ("federation", "map_name", "key"),
    [("1" * 32, "progress", "slot@7"), (FID, "approvals", "slot@7"), (FID, "progress", "other@7")],
)
def test_signature_binds_federation_map_and_slot(federation: str, map_name: str, key: str) -> None:
    _, value = seal(KEY, FID, "progress", "slot", 7, {"round": 3})
    moved = open_record(map_name, key, value)
    assert not moved.verifies(federation, bytes(KEY.verify_key))


def test_every_flipped_byte_breaks_the_record() -> None:
    key, value = seal(KEY, FID, "progress", "slot", 7, {"round": 3})
    for index in range(len(value)):
        flipped = bytearray(value)
        flipped[index] ^= 0x01
        try:
            record = open_record("progress", key, bytes(flipped))
        except DecodeError:
            continue
        assert not record.verifies(FID, bytes(KEY.verify_key)), index


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("slot@7", "not bytes"),
        ("slot@7", b"\x00" * 10),
        ("slot", b"\x00" * 100),
        ("slot@07", b"\x00" * 100),
        ("slot@0", b"\x00" * 100),
        ("a@b@1", b"\x00" * 100),
        (3, b"\x00" * 100),
    ],
)
def test_open_refuses_malformed_entries(key: object, value: object) -> None:
    with pytest.raises(DecodeError):
        open_record("progress", key, value)


def test_open_refuses_a_clock_that_differs_from_the_key() -> None:
    _, value = seal(KEY, FID, "progress", "slot", 7, {"round": 3})
    with pytest.raises(DecodeError):
        open_record("progress", "slot@8", value)


@FAST
@given(st.one_of(st.text(max_size=40), st.integers()), st.binary(max_size=300))
def test_open_record_decodes_or_raises_decode_error(key: object, value: bytes) -> None:
    with contextlib.suppress(DecodeError):
        open_record("members", key, value)


def test_seal_refuses_bad_clocks_and_slots() -> None:
    with pytest.raises(LocalProtocolError):
        seal(KEY, FID, "progress", "slot", 0, {})
    with pytest.raises(LocalProtocolError):
        seal(KEY, FID, "progress", "a@b", 1, {})


def test_keys_and_round_slots_parse() -> None:
    assert parse_key("abc@12") == ("abc", 12)
    node_id = node_id_for(bytes(KEY.verify_key))
    assert parse_round_slot(f"3/{node_id}") == (3, node_id)
    assert parse_round_slot("03/x") is None
    assert parse_round_slot(node_id) is None


def test_plan_hash_ignores_key_order() -> None:
    assert records.plan_hash({"a": 1, "b": {"c": 2.5}}) == records.plan_hash(
        {"b": {"c": 2.5}, "a": 1}
    )
    assert len(records.plan_hash({"a": 1})) == 32
