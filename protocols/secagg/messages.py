"""The wire messages of a secure-aggregation round: frozen, self-validating, one codec.

Frame layout (all little-endian)::

    b"SA" | version u8 | kind u8 | header length u32 | msgpack header | payload

The header is a msgpack array of the message's fields. Only
:class:`MaskedInput` has a payload: its codes as raw ``<u4``/``<u8`` words,
decoded without copying (``np.frombuffer``; the array is read-only when the
frame is ``bytes``). Any byte string either decodes to a valid message or
raises :class:`~protocols.errors.DecodeError`, the one documented error.
Constructing a message with bad fields raises ``LocalProtocolError``. Sizes
are bounded: ids, peers per message, sealed shares, reasons.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

import msgpack
import numpy as np

from protocols.errors import DecodeError, LocalProtocolError
from protocols.secagg.config import MAX_ID_CHARS, MAX_NEIGHBOURS
from protocols.secagg.prg import Codes
from protocols.secagg.shamir import SHARE_BYTES, check_share

MAGIC = b"SA"
VERSION = 2  # 2: 64-byte self-mask shares over GF(2^32 - 5)
SEED_BYTES = 32
MAX_SEALED_BYTES = 4096
MAX_REASON_CHARS = 1024
_HEAD = struct.Struct("<2sBBI")
_MAX_HEADER = 4 * MAX_NEIGHBOURS * (MAX_SEALED_BYTES + MAX_ID_CHARS + 16)


def _int(value: object, what: str, hi: int = 2**63 - 1) -> int:
    if type(value) is not int or not 0 <= value <= hi:
        raise LocalProtocolError(f"{what} must be an integer in [0, {hi}]")
    return value


def _id(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        raise LocalProtocolError(
            f"{what} must be a non-empty string of at most {MAX_ID_CHARS} chars"
        )
    return value


def _ids(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple | frozenset | set) or len(value) > MAX_NEIGHBOURS:
        raise LocalProtocolError(f"{what} must be a list of at most {MAX_NEIGHBOURS} ids")
    ids = tuple(sorted(_id(v, what) for v in value))
    if len(set(ids)) != len(ids):
        raise LocalProtocolError(f"{what} lists an id twice")
    return ids


def _blob(value: object, what: str, size: int | None, max_size: int) -> bytes:
    if not isinstance(value, bytes) or len(value) > max_size:
        raise LocalProtocolError(f"{what} must be at most {max_size} bytes")
    if size is not None and len(value) != size:
        raise LocalProtocolError(f"{what} must be {size} bytes")
    return value


def _blobs(
    value: object, what: str, size: int | None = None, max_size: int = MAX_SEALED_BYTES
) -> Mapping[str, bytes]:
    if not isinstance(value, Mapping) or len(value) > MAX_NEIGHBOURS:
        raise LocalProtocolError(f"{what} must map at most {MAX_NEIGHBOURS} ids to bytes")
    items = sorted((_id(k, what), _blob(v, what, size, max_size)) for k, v in value.items())
    return MappingProxyType(dict(items))


def _fields(value: object, count: int, kind: str) -> list[Any]:
    if not isinstance(value, list) or len(value) != count:
        raise LocalProtocolError(f"{kind} header must be an array of {count} fields")
    return value


class _Message:
    """Shared codec; subclasses give their kind, header fields and constructor."""

    KIND: ClassVar[int]

    def header(self) -> list[Any]:
        raise NotImplementedError

    def payload(self) -> memoryview:
        return memoryview(b"")

    @classmethod
    def from_fields(cls, fields: object, payload: memoryview) -> _Message:
        raise NotImplementedError

    def encode_parts(self) -> list[bytes | memoryview]:
        """The frame as [head, payload] buffers, to send without joining big payloads."""
        header = msgpack.packb(self.header(), use_bin_type=True)
        head = _HEAD.pack(MAGIC, VERSION, self.KIND, len(header)) + header
        payload = self.payload()
        return [head, payload] if len(payload) else [head]

    def encode(self) -> bytes:
        return b"".join(self.encode_parts())

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Message:
        message = decode(data)
        if not isinstance(message, cls):
            raise DecodeError(f"expected {cls.__name__}, got {type(message).__name__}")
        return message


def _no_payload(payload: memoryview, kind: str) -> None:
    if len(payload):
        raise LocalProtocolError(f"{kind} carries no payload")


@dataclass(frozen=True)
class ShareKeys(_Message):
    """Neighbour -> receiver (Round 1): its self-mask shares, one sealed box per holder."""

    KIND: ClassVar[int] = 1
    round: int
    receiver: str
    sender: str
    shares: Mapping[str, bytes]

    def __post_init__(self) -> None:
        _int(self.round, "round")
        _id(self.receiver, "receiver")
        _id(self.sender, "sender")
        object.__setattr__(self, "shares", _blobs(self.shares, "shares"))

    def header(self) -> list[Any]:
        return [self.round, self.receiver, self.sender, dict(self.shares)]

    @classmethod
    def from_fields(cls, fields: object, payload: memoryview) -> ShareKeys:
        _no_payload(payload, "ShareKeys")
        f = _fields(fields, 4, "ShareKeys")
        return cls(f[0], f[1], f[2], f[3])


@dataclass(frozen=True)
class ShareRelay(_Message):
    """Receiver -> holder (end of Round 1): the roster U2 and the shares sealed to this holder."""

    KIND: ClassVar[int] = 2
    round: int
    receiver: str
    holder: str
    roster: tuple[str, ...]
    shares: Mapping[str, bytes]

    def __post_init__(self) -> None:
        _int(self.round, "round")
        _id(self.receiver, "receiver")
        _id(self.holder, "holder")
        object.__setattr__(self, "roster", _ids(self.roster, "roster"))
        object.__setattr__(self, "shares", _blobs(self.shares, "shares"))

    def header(self) -> list[Any]:
        return [self.round, self.receiver, self.holder, list(self.roster), dict(self.shares)]

    @classmethod
    def from_fields(cls, fields: object, payload: memoryview) -> ShareRelay:
        _no_payload(payload, "ShareRelay")
        f = _fields(fields, 5, "ShareRelay")
        return cls(f[0], f[1], f[2], f[3], f[4])


@dataclass(frozen=True, eq=False)
class MaskedInput(_Message):
    """Neighbour -> receiver (Round 2): masked codes ``y_j``, uniformly random on their own."""

    KIND: ClassVar[int] = 3
    round: int
    receiver: str
    sender: str
    codes: Codes

    def __post_init__(self) -> None:
        _int(self.round, "round")
        _id(self.receiver, "receiver")
        _id(self.sender, "sender")
        codes = self.codes
        if not isinstance(codes, np.ndarray) or codes.ndim != 1:
            raise LocalProtocolError("codes must be a 1-D numpy array")
        if codes.dtype not in (np.dtype("<u4"), np.dtype("<u8")):
            raise LocalProtocolError("codes must be little-endian uint32 or uint64")

    @property
    def modulus_bits(self) -> int:
        return 8 * self.codes.dtype.itemsize

    def header(self) -> list[Any]:
        return [self.round, self.receiver, self.sender, self.modulus_bits, len(self.codes)]

    def payload(self) -> memoryview:
        return np.ascontiguousarray(self.codes).data.cast("B")

    @classmethod
    def from_fields(cls, fields: object, payload: memoryview) -> MaskedInput:
        f = _fields(fields, 5, "MaskedInput")
        bits = f[3]
        if type(bits) is not int or bits not in (32, 64):
            raise LocalProtocolError("MaskedInput modulus bits must be 32 or 64")
        count = _int(f[4], "word count")
        if len(payload) != count * (bits // 8):
            raise LocalProtocolError(f"MaskedInput payload is not {count} words of {bits} bits")
        codes = np.frombuffer(payload, dtype=f"<u{bits // 8}", count=count)
        return cls(f[0], f[1], f[2], codes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MaskedInput):
            return NotImplemented
        return (self.round, self.receiver, self.sender) == (
            other.round,
            other.receiver,
            other.sender,
        ) and (self.codes.dtype == other.codes.dtype and np.array_equal(self.codes, other.codes))

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class DropoutDeclaration(_Message):
    """Receiver -> roster (Round 3): who survived and who is declared dropped.

    The runtime records it, signed, in the ledger under (round, receiver); a
    holder acts only on the declaration the ledger holds, so all holders see
    the same sets (the role of Bonawitz et al.'s ConsistencyCheck).
    """

    KIND: ClassVar[int] = 4
    round: int
    receiver: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]

    def __post_init__(self) -> None:
        _int(self.round, "round")
        _id(self.receiver, "receiver")
        object.__setattr__(self, "survivors", _ids(self.survivors, "survivors"))
        object.__setattr__(self, "dropped", _ids(self.dropped, "dropped"))
        if set(self.survivors) & set(self.dropped):
            raise LocalProtocolError("a node cannot be both a survivor and dropped")

    def header(self) -> list[Any]:
        return [self.round, self.receiver, list(self.survivors), list(self.dropped)]

    @classmethod
    def from_fields(cls, fields: object, payload: memoryview) -> DropoutDeclaration:
        _no_payload(payload, "DropoutDeclaration")
        f = _fields(fields, 4, "DropoutDeclaration")
        return cls(f[0], f[1], f[2], f[3])


@dataclass(frozen=True)
class Reveal(_Message):
    """Survivor -> receiver (Round 4): pair seeds with dropped partners, shares of survivors."""

    KIND: ClassVar[int] = 5
    round: int
    receiver: str
    sender: str
    pair_seeds: Mapping[str, bytes]
    self_shares: Mapping[str, bytes]

    def __post_init__(self) -> None:
        _int(self.round, "round")
        _id(self.receiver, "receiver")
        _id(self.sender, "sender")
        pairs = _blobs(self.pair_seeds, "pair_seeds", SEED_BYTES, SEED_BYTES)
        shares = _blobs(self.self_shares, "self_shares", SHARE_BYTES, SHARE_BYTES)
        for share in shares.values():
            check_share(share)
        if set(pairs) & set(shares):
            raise LocalProtocolError(
                "a reveal cannot hold both a pair seed and a share of one peer"
            )
        object.__setattr__(self, "pair_seeds", pairs)
        object.__setattr__(self, "self_shares", shares)

    def header(self) -> list[Any]:
        return [
            self.round,
            self.receiver,
            self.sender,
            dict(self.pair_seeds),
            dict(self.self_shares),
        ]

    @classmethod
    def from_fields(cls, fields: object, payload: memoryview) -> Reveal:
        _no_payload(payload, "Reveal")
        f = _fields(fields, 5, "Reveal")
        return cls(f[0], f[1], f[2], f[3], f[4])


@dataclass(frozen=True)
class Abandon(_Message):
    """Receiver -> neighbourhood: the round is abandoned; holders drop their shares."""

    KIND: ClassVar[int] = 6
    round: int
    receiver: str
    reason: str

    def __post_init__(self) -> None:
        _int(self.round, "round")
        _id(self.receiver, "receiver")
        if not isinstance(self.reason, str) or len(self.reason) > MAX_REASON_CHARS:
            raise LocalProtocolError(f"reason must be a string of at most {MAX_REASON_CHARS} chars")

    def header(self) -> list[Any]:
        return [self.round, self.receiver, self.reason]

    @classmethod
    def from_fields(cls, fields: object, payload: memoryview) -> Abandon:
        _no_payload(payload, "Abandon")
        f = _fields(fields, 3, "Abandon")
        return cls(f[0], f[1], f[2])


Message = ShareKeys | ShareRelay | MaskedInput | DropoutDeclaration | Reveal | Abandon
_KINDS: dict[int, type[_Message]] = {
    cls.KIND: cls
    for cls in (ShareKeys, ShareRelay, MaskedInput, DropoutDeclaration, Reveal, Abandon)
}


def encode(message: Message) -> bytes:
    return message.encode()


def _head(data: bytes | bytearray | memoryview) -> tuple[memoryview, int, int]:
    """A frame's bytes, its kind and its header's length, from its fixed head."""
    try:
        view = memoryview(data).cast("B")
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"not a contiguous byte buffer: {exc}") from None
    if len(view) < _HEAD.size:
        raise DecodeError("frame shorter than its fixed head")
    magic, version, kind, header_len = _HEAD.unpack_from(view)
    if magic != MAGIC or version != VERSION:
        raise DecodeError("not a secure-aggregation frame of a supported version")
    return view, kind, header_len


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Decode one frame; raise :class:`DecodeError` for anything that is not a valid message."""
    view, kind, header_len = _head(data)
    cls = _KINDS.get(kind)
    if cls is None:
        raise DecodeError(f"unknown message kind {kind}")
    end = _HEAD.size + header_len
    if header_len > _MAX_HEADER or end > len(view):
        raise DecodeError("header length out of bounds")
    try:
        fields = msgpack.unpackb(
            view[_HEAD.size : end],
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_REASON_CHARS * 4,
            max_bin_len=MAX_SEALED_BYTES,
            max_array_len=MAX_NEIGHBOURS,
            max_map_len=MAX_NEIGHBOURS,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types for bad input; all mean "not a frame"
        raise DecodeError(f"header is not valid msgpack: {exc}") from None
    try:
        return _narrow(cls.from_fields(fields, view[end:]))
    except (LocalProtocolError, TypeError, ValueError) as exc:
        raise DecodeError(f"bad {cls.__name__}: {exc}") from None


def _narrow(message: _Message) -> Message:
    assert isinstance(
        message, ShareKeys | ShareRelay | MaskedInput | DropoutDeclaration | Reveal | Abandon
    )
    return message


def peek_round(data: bytes | bytearray | memoryview) -> int:
    """The round of a secure-aggregation frame: its header's first field, nothing else decoded.

    For routing a frame to the core of its round's epoch; ``DecodeError`` if it has none.
    """
    view, _, header_len = _head(data)
    end = _HEAD.size + min(header_len, 16)  # an array head and one integer fit in 10 bytes
    if end > len(view):
        raise DecodeError("header length out of bounds")
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=16)
    unpacker.feed(view[_HEAD.size : end])
    try:
        if unpacker.read_array_header() < 1:
            raise DecodeError("empty header")
        round_ = unpacker.unpack()
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises many types for bad input
        raise DecodeError(f"header is not valid msgpack: {exc}") from None
    if type(round_) is not int or round_ < 0:
        raise DecodeError("the header's first field is not a round")
    return round_
