"""Wire frames: round trips, zero-copy decoding, and one error for every bad byte string."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import wire
from protocols.compression import QuantizeCompressor, TopKCompressor
from protocols.errors import DecodeError
from protocols.wire import Encoding, GossipMessage, Payload, decode, dense, encode

FAST = settings(max_examples=50, deadline=None)

senders = st.text(max_size=40)
rounds = st.integers(0, 2**40)
weights = st.floats(0, 1e6, allow_nan=False)
lengths = st.integers(0, 64)


def vectors(dtype: Any, n: int) -> st.SearchStrategy[np.ndarray]:
    floats = st.floats(-1e6, 1e6, allow_nan=False, width=np.dtype(dtype).itemsize * 8)
    return st.lists(floats, min_size=n, max_size=n).map(lambda xs: np.array(xs, dtype=dtype))


@st.composite
def messages(draw: st.DrawFn) -> GossipMessage:
    """A valid message in any encoding, built the way the compressors build them."""
    n = draw(lengths)
    kind = draw(st.sampled_from(["f4", "f8", "quantized", "topk"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "f4" or kind == "f8":
        payload = dense(draw(vectors(np.dtype(kind), n)))
    elif kind == "quantized":
        v = draw(vectors(np.float32, n))
        payload = QuantizeCompressor(draw(st.integers(2, 8))).compress(v, rng)
    else:
        v = draw(vectors(np.float32, n))
        payload = TopKCompressor(draw(st.floats(0.01, 1.0))).compress(v, rng)
    return GossipMessage(draw(senders), draw(rounds), payload, draw(weights))


def assert_same(a: GossipMessage, b: GossipMessage) -> None:
    assert (a.sender, a.round, a.weight) == (b.sender, b.round, b.weight)
    pa, pb = a.payload, b.payload
    assert (pa.encoding, pa.length, pa.norm, pa.bits) == (pb.encoding, pb.length, pb.norm, pb.bits)
    assert pa.values.dtype == pb.values.dtype
    assert np.array_equal(pa.values, pb.values)
    if pa.indices is None:
        assert pb.indices is None
    else:
        assert pb.indices is not None
        assert pb.indices.dtype == np.uint32
        assert np.array_equal(pa.indices, pb.indices)


def raw_frame(header: Any, payload: bytes = b"", *, magic: bytes = wire.MAGIC) -> bytes:
    """A frame with an arbitrary header object, bypassing ``encode``'s checks."""
    packed = msgpack.packb(header)
    return struct.pack("<3sBI", magic, wire.VERSION, len(packed)) + packed + payload


def header(**overrides: Any) -> dict[str, Any]:
    base = {"s": "a", "r": 0, "w": 1.0, "e": "dense", "n": 2, "m": 0.0, "b": 0, "p": [["f4", 2]]}
    base.update(overrides)
    return base


def decodes_or_raises(data: bytes | bytearray | memoryview, **kwargs: Any) -> None:
    """The contract: a ``GossipMessage`` or ``DecodeError``; any other exception escapes."""
    try:
        message = decode(data, **kwargs)
    except DecodeError:
        return
    assert isinstance(message, GossipMessage)
    assert isinstance(message.payload, Payload)


# --- round trips ---------------------------------------------------------------


@FAST
@given(messages())
def test_round_trip_every_encoding(message: GossipMessage) -> None:
    assert_same(message, decode(encode(message)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_round_trip_keeps_dtype_and_bits(dtype: Any) -> None:
    v = np.array([0.0, -0.0, 1.5, np.inf, -np.inf, 1e-30, np.pi], dtype=dtype)
    out = decode(encode(GossipMessage("node", 3, dense(v), 0.25)))
    assert out.payload.values.dtype == np.dtype(dtype)
    assert out.payload.values.tobytes() == v.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    assert (out.sender, out.round, out.weight) == ("node", 3, 0.25)


@pytest.mark.parametrize("dtype", [">f4", ">f8"])
def test_big_endian_input_travels_as_little_endian(dtype: str) -> None:
    v = np.arange(5, dtype=dtype)
    out = decode(encode(GossipMessage("a", 0, dense(v))))
    assert out.payload.values.dtype.byteorder in "<="
    assert np.array_equal(out.payload.values, v)


def test_non_contiguous_vector_round_trips() -> None:
    v = np.arange(20, dtype=np.float32)[::3]
    assert np.array_equal(decode(encode(GossipMessage("a", 0, dense(v)))).payload.values, v)


def test_empty_vector_round_trips() -> None:
    out = decode(encode(GossipMessage("a", 0, dense(np.zeros(0, np.float32)))))
    assert out.payload.length == 0 and out.payload.values.size == 0


def test_encoded_frame_has_exact_layout() -> None:
    frame = encode(GossipMessage("a", 1, dense(np.array([1.0, 2.0], np.float32))))
    magic, version, header_len = struct.unpack_from("<3sBI", frame)
    assert (magic, version) == (b"P2G", 1)
    assert len(frame) == 8 + header_len + 8
    assert frame[-8:] == np.array([1.0, 2.0], "<f4").tobytes()


def test_long_sender_either_refused_by_encode_or_decodable() -> None:
    """``encode`` must not produce frames that ``decode`` rejects (header > MAX_HEADER_BYTES)."""
    message = GossipMessage("x" * (wire.MAX_HEADER_BYTES + 1), 0, dense(np.zeros(1, np.float32)))
    try:
        frame = encode(message)
    except ValueError:
        return
    assert decode(frame).sender == message.sender


# --- zero copy -------------------------------------------------------------------


@pytest.mark.parametrize("container", [bytes, bytearray, memoryview])
def test_decode_returns_views_into_the_buffer(container: Any) -> None:
    v = np.arange(1000, dtype=np.float64)
    frame = container(encode(GossipMessage("a", 0, dense(v))))
    backing = np.frombuffer(frame, dtype=np.uint8)
    values = decode(frame).payload.values
    assert np.shares_memory(values, backing)
    assert not values.flags.owndata


def test_topk_views_share_the_buffer_and_bytes_input_is_read_only() -> None:
    v = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    payload = TopKCompressor(0.1).compress(v, np.random.default_rng(1))
    frame = encode(GossipMessage("a", 0, payload))
    out = decode(frame).payload
    backing = np.frombuffer(frame, dtype=np.uint8)
    assert out.indices is not None
    assert np.shares_memory(out.values, backing)
    assert np.shares_memory(out.indices, backing)
    assert not out.values.flags.writeable


# --- every byte string decodes or raises DecodeError -------------------------------


@FAST
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    decodes_or_raises(data)


@FAST
@given(st.binary(max_size=200))
def test_any_bytes_after_a_valid_prefix(data: bytes) -> None:
    decodes_or_raises(struct.pack("<3sBI", wire.MAGIC, wire.VERSION, len(data)) + data)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(encode(draw(messages())))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "truncate", "extend", "delete"]))
        if action in ("flip", "set", "delete") and frame:
            k = draw(st.integers(0, len(frame) - 1))
            if action == "flip":
                frame[k] ^= 1 << draw(st.integers(0, 7))
            elif action == "set":
                frame[k] = draw(st.integers(0, 255))
            else:
                del frame[k]
        elif action == "truncate":
            del frame[draw(st.integers(0, len(frame))) :]
        else:
            frame += draw(st.binary(min_size=1, max_size=16))
    return bytes(frame)


@settings(max_examples=60, deadline=None)
@given(mutated_frames())
def test_mutated_valid_frames_decode_or_raise_decode_error(frame: bytes) -> None:
    decodes_or_raises(frame)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def fuzzed_headers(draw: st.DrawFn) -> bytes:
    """Structurally plausible headers whose fields are replaced by arbitrary msgpack values."""
    fields = header(
        e=draw(st.sampled_from(["dense", "quantized", "topk"])),
        n=draw(st.integers(0, 8)),
        b=draw(st.integers(0, 9)),
    )
    dtype = st.sampled_from(["f4", "f8", "u4", "u1"]) | msgpack_values
    count = st.integers(-1, 9) | msgpack_values
    fields["p"] = draw(st.lists(st.lists(dtype | count, min_size=2, max_size=2), max_size=3))
    for key in draw(st.sets(st.sampled_from(sorted(fields)))):
        fields[key] = draw(msgpack_values)
    return raw_frame(fields, draw(st.binary(max_size=80)))


@settings(max_examples=60, deadline=None)
@given(fuzzed_headers())
def test_fuzzed_headers_decode_or_raise_decode_error(frame: bytes) -> None:
    decodes_or_raises(frame)


@pytest.mark.parametrize(
    "bad_part",
    [[[1], 2], [{"a": 1}, 2], ["f4", [2]], ["f4"], "f4", [["f4", 2]]],
    ids=["list-dtype", "map-dtype", "list-count", "short", "string", "nested"],
)
def test_malformed_part_descriptions_raise_decode_error(bad_part: Any) -> None:
    """A dtype name that msgpack decodes to a list or map is unhashable: still DecodeError."""
    frame = raw_frame(header(p=[bad_part]), b"\0" * 8)
    with pytest.raises(DecodeError):
        decode(frame)


@pytest.mark.parametrize(
    ("overrides", "payload"),
    [
        ({"s": 1}, b"\0" * 8),
        ({"r": -1}, b"\0" * 8),
        ({"r": True}, b"\0" * 8),
        ({"w": float("nan")}, b"\0" * 8),
        ({"w": -1.0}, b"\0" * 8),
        ({"e": "zip"}, b"\0" * 8),
        ({"n": 3}, b"\0" * 8),
        ({}, b"\0" * 9),
        ({}, b"\0" * 7),
        ({"p": [["u1", 8]]}, b"\0" * 8),
        ({"p": [["f4", 1], ["u4", 1]]}, b"\0" * 8),
        ({"e": "topk", "p": [["f4", 1]]}, b"\0" * 4),
        ({"e": "topk", "p": [["u1", 1], ["u4", 1]]}, b"\0" * 5),
        ({"e": "topk", "p": [["f4", 1], ["f4", 1]]}, b"\0" * 8),
        ({"e": "quantized", "b": 4, "p": [["u1", 2]]}, b"\0" * 2),
        ({"e": "quantized", "b": 9, "p": [["u1", 3]]}, b"\0" * 3),
        ({"e": "quantized", "b": 8, "m": -1.0, "p": [["u1", 2]]}, b"\0" * 2),
    ],
)
def test_invalid_headers_raise_decode_error(overrides: dict[str, Any], payload: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(raw_frame(header(**overrides), payload))


def test_bad_magic_version_and_header_length() -> None:
    good = encode(GossipMessage("a", 0, dense(np.zeros(2, np.float32))))
    assert isinstance(decode(good), GossipMessage)
    for bad in (
        b"XYZ" + good[3:],
        good[:3] + b"\x02" + good[4:],
        good[:4] + b"\xff" * 4 + good[8:],
    ):
        with pytest.raises(DecodeError):
            decode(bad)
    with pytest.raises(DecodeError):
        decode(good[:7])


def topk_frame(indices: list[int], length: int = 5) -> bytes:
    idx = np.array(indices, dtype="<u4").tobytes()
    vals = np.ones(len(indices), dtype="<f4").tobytes()
    parts = [["f4", len(indices)], ["u4", len(indices)]]
    return raw_frame(header(e="topk", n=length, p=parts), vals + idx)


@pytest.mark.parametrize("indices", [[3, 1], [0, 4, 2], [2, 1, 2], [1, 1], [5], [0, 5]])
def test_topk_indices_must_be_strictly_increasing_and_in_range(indices: list[int]) -> None:
    """Payload's contract says strictly increasing; a decreasing pair must not slip through."""
    with pytest.raises(DecodeError):
        decode(topk_frame(indices))


def test_valid_topk_frame_decodes() -> None:
    out = decode(topk_frame([0, 2, 4]))
    assert out.payload.indices is not None
    assert out.payload.indices.tolist() == [0, 2, 4]


# --- size bounds ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dense", "quantized", "topk"])
def test_max_elements_bound_is_enforced(kind: str) -> None:
    v = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    rng = np.random.default_rng(1)
    payload = {
        "dense": dense(v),
        "quantized": QuantizeCompressor(8).compress(v, rng),
        "topk": TopKCompressor(1.0).compress(v, rng),
    }[kind]
    frame = encode(GossipMessage("a", 0, payload))
    assert decode(frame, max_elements=100).payload.length == 100
    with pytest.raises(DecodeError):
        decode(frame, max_elements=99)


def test_part_counts_are_bounded_before_any_allocation() -> None:
    frame = raw_frame(header(n=1, p=[["f8", 2**62]]), b"\0" * 8)
    with pytest.raises(DecodeError):
        decode(frame, max_elements=1 << 20)


def test_header_larger_than_the_bound_is_refused() -> None:
    frame = raw_frame(header(s="x" * (wire.MAX_HEADER_BYTES + 10)), b"\0" * 8)
    with pytest.raises(DecodeError):
        decode(frame)


# --- messages validate themselves ----------------------------------------------------------


def test_messages_validate_themselves() -> None:
    v = np.zeros(3, np.float32)
    with pytest.raises(ValueError):
        GossipMessage("a", -1, dense(v))
    with pytest.raises(ValueError):
        GossipMessage("a", 0, dense(v), weight=float("inf"))
    with pytest.raises(ValueError):
        Payload(Encoding.DENSE, 4, v)
    with pytest.raises(ValueError):
        Payload(Encoding.TOPK, 3, v)
    with pytest.raises(ValueError):
        Payload(Encoding.QUANTIZED, 3, v.view(np.uint8), bits=0)
    assert issubclass(DecodeError, ValueError)
