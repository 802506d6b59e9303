"""Wire messages: every one round-trips, and any byte string decodes or raises DecodeError."""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import DecodeError, LocalProtocolError
from protocols.secagg import (
    Abandon,
    DropoutDeclaration,
    MaskedInput,
    Message,
    Reveal,
    ShareKeys,
    ShareRelay,
    decode,
)
from protocols.secagg.shamir import PRIME

ids = st.text(min_size=1, max_size=12)
rounds = st.integers(0, 2**63 - 1)
seeds = st.binary(min_size=32, max_size=32)
shares_of_seeds = st.lists(st.integers(0, PRIME - 1), min_size=16, max_size=16).map(
    lambda words: np.array(words, dtype="<u4").tobytes()
)
sealed = st.binary(max_size=120)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    kind = draw(st.integers(0, 5))
    r, receiver = draw(rounds), draw(ids)
    if kind == 0:
        return ShareKeys(r, receiver, draw(ids), draw(st.dictionaries(ids, sealed, max_size=5)))
    if kind == 1:
        roster = draw(st.lists(ids, unique=True, max_size=5))
        shares = draw(st.dictionaries(ids, sealed, max_size=5))
        return ShareRelay(r, receiver, draw(ids), tuple(roster), shares)
    if kind == 2:
        dtype = draw(st.sampled_from(["<u4", "<u8"]))
        words = draw(st.lists(st.integers(0, 2**32 - 1), max_size=40))
        return MaskedInput(r, receiver, draw(ids), np.array(words, dtype=dtype))
    if kind == 3:
        nodes = draw(st.lists(ids, unique=True, max_size=8))
        cut = draw(st.integers(0, len(nodes)))
        return DropoutDeclaration(r, receiver, tuple(nodes[:cut]), tuple(nodes[cut:]))
    if kind == 4:
        nodes = draw(st.lists(ids, unique=True, max_size=8))
        cut = draw(st.integers(0, len(nodes)))
        pairs = {n: draw(seeds) for n in nodes[:cut]}
        shares = {n: draw(shares_of_seeds) for n in nodes[cut:]}
        return Reveal(r, receiver, draw(ids), pairs, shares)
    return Abandon(r, receiver, draw(st.text(max_size=50)))


@settings(max_examples=150, deadline=None)
@given(messages())
def test_every_message_round_trips(message: Message) -> None:
    data = message.encode()
    again = decode(data)
    assert type(again) is type(message)
    assert again == message
    assert type(message).decode(data) == message
    assert b"".join(message.encode_parts()) == data


def decodes_or_refuses(data: bytes) -> None:
    """The contract: a valid message (that re-encodes to itself) or DecodeError, nothing else."""
    try:
        message = decode(data)
    except DecodeError:
        return
    assert decode(message.encode()) == message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    decodes_or_refuses(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6), st.binary(max_size=200))
def test_any_header_after_a_valid_head_decodes_or_raises(kind: int, body: bytes) -> None:
    data = struct.pack("<2sBBI", b"SA", 1, kind, len(body)) + body
    decodes_or_refuses(data)


@settings(max_examples=120, deadline=None)
@given(messages(), st.data())
def test_corrupted_frames_decode_or_raise(message: Message, data: st.DataObject) -> None:
    frame = bytearray(message.encode())
    position = data.draw(st.integers(0, len(frame) - 1))
    frame[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    for candidate in (bytes(frame), bytes(frame[:cut]), bytes(frame) + b"\x00"):
        decodes_or_refuses(candidate)


def test_masked_input_decodes_without_copying() -> None:
    codes = np.arange(1000, dtype="<u4")
    data = MaskedInput(1, "r", "s", codes).encode()
    decoded = MaskedInput.decode(data)
    assert np.shares_memory(decoded.codes, np.frombuffer(data, dtype=np.uint8))
    assert not decoded.codes.flags.writeable
    assert np.array_equal(decoded.codes, codes)


def test_decode_of_the_wrong_class_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="expected Reveal"):
        Reveal.decode(Abandon(1, "r", "x").encode())


def test_non_buffers_and_strangers_are_decode_errors() -> None:
    for bad in (b"", b"SA", b"XX\x01\x01\x00\x00\x00\x00", "text"):
        with pytest.raises(DecodeError):
            decode(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "build",
    [
        lambda: Reveal(1, "r", "s", {"a": b"x" * 32}, {"a": b"y" * 64}),
        lambda: Reveal(1, "r", "s", {}, {"a": b"y" * 32}),
        lambda: Reveal(1, "r", "s", {}, {"a": b"\xff" * 64}),
        lambda: Reveal(1, "r", "s", {"a": b"short"}, {}),
        lambda: DropoutDeclaration(1, "r", ("a",), ("a",)),
        lambda: ShareRelay(1, "r", "h", ("a", "a"), {}),
        lambda: ShareKeys(-1, "r", "s", {}),
        lambda: ShareKeys(True, "r", "s", {}),
        lambda: MaskedInput(1, "r", "s", np.zeros(3, dtype=np.int32)),
        lambda: MaskedInput(1, "r", "s", np.zeros(3, dtype=">u4")),
        lambda: Abandon(1, "", "x"),
    ],
)
def test_messages_validate_themselves(build: object) -> None:
    with pytest.raises(LocalProtocolError):
        build()  # type: ignore[operator]


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=120, deadline=None)
@given(st.integers(1, 6), st.lists(msgpack_values, max_size=6), st.binary(max_size=16))
def test_well_formed_msgpack_with_wrong_fields_is_refused(
    kind: int, fields: list[object], payload: bytes
) -> None:
    header = msgpack.packb(fields, use_bin_type=True)
    decodes_or_refuses(struct.pack("<2sBBI", b"SA", 1, kind, len(header)) + header + payload)
