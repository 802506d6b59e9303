"""Gossip wire messages: a small msgpack header followed by raw little-endian tensor bytes.

Frame layout (all integers little-endian)::

    b"P2G" | version (1 byte) | header length (uint32) | msgpack header | payload

The header names the sender, the round, the payload's encoding and the byte
length of each payload part; the payload parts follow back to back. Decoding
never copies the payload: vectors are ``numpy.frombuffer`` views into the
received bytes (read-only), so a 100 MB model costs no extra 100 MB.

``decode`` accepts any byte string and either returns a ``GossipMessage`` or
raises ``DecodeError``; nothing else escapes it. Sizes are bounded by the
``max_elements`` argument so that a peer cannot make us allocate at will.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from protocols.errors import DecodeError

MAGIC = b"P2G"
VERSION = 1
_PREFIX = struct.Struct("<3sBI")
MAX_HEADER_BYTES = 4096
DEFAULT_MAX_ELEMENTS = 1 << 31

_DTYPES: dict[str, np.dtype[Any]] = {
    "f4": np.dtype("<f4"),
    "f8": np.dtype("<f8"),
    "u4": np.dtype("<u4"),
    "u1": np.dtype("u1"),
}


class Encoding(StrEnum):
    """How a vector travels: whole, k-bit quantized, or its top-k entries."""

    DENSE = "dense"
    QUANTIZED = "quantized"
    TOPK = "topk"


@dataclass(frozen=True, eq=False)
class Payload:
    """A vector of ``length`` elements in one of the three encodings.

    - dense: ``values`` holds all ``length`` entries (float32 or float64).
    - quantized: ``values`` holds bit-packed unsigned levels of ``bits`` bits each,
      ``norm`` the vector's 2-norm; entry = norm * (level - offset) / levels (2-8 bits).
    - topk: ``indices`` (uint32, strictly increasing) and ``values`` (float32).
    """

    encoding: Encoding
    length: int
    values: npt.NDArray[Any]
    indices: npt.NDArray[np.uint32] | None = None
    norm: float = 0.0
    bits: int = 0

    def __post_init__(self) -> None:
        if self.length < 0:
            raise ValueError("length must be non-negative")
        if self.encoding is Encoding.DENSE and self.values.shape != (self.length,):
            raise ValueError("a dense payload holds exactly `length` values")
        topk = self.encoding is Encoding.TOPK
        if topk and (self.indices is None or self.indices.shape != self.values.shape):
            raise ValueError("a top-k payload needs one index per value")
        if self.encoding is Encoding.QUANTIZED and not 2 <= self.bits <= 8:
            raise ValueError("quantized payloads use 2 to 8 bits per entry")

    @property
    def nbytes(self) -> int:
        extra = 0 if self.indices is None else self.indices.nbytes
        return int(self.values.nbytes) + extra


@dataclass(frozen=True, eq=False)
class GossipMessage:
    """One node's contribution for one round.

    ``weight`` is the push-sum weight (1.0 outside the asynchronous mode).
    """

    sender: str
    round: int
    payload: Payload
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.round < 0:
            raise ValueError("round must be non-negative")
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ValueError("weight must be finite and non-negative")


def _dtype_name(array: npt.NDArray[Any]) -> str:
    for name, dtype in _DTYPES.items():
        if array.dtype == dtype or array.dtype == dtype.newbyteorder("="):
            return name
    raise ValueError(f"unsupported dtype {array.dtype}")


def _le(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The array as contiguous little-endian memory (no copy on little-endian hosts)."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))


def _parts_of(payload: Payload) -> list[npt.NDArray[Any]]:
    parts = [payload.values]
    if payload.indices is not None:
        parts.append(payload.indices)
    return parts


def _header(message: GossipMessage, parts: list[npt.NDArray[Any]]) -> bytes:
    payload = message.payload
    header: bytes = msgpack.packb(
        {
            "s": message.sender,
            "r": message.round,
            "w": message.weight,
            "e": payload.encoding.value,
            "n": payload.length,
            "m": payload.norm,
            "b": payload.bits,
            "p": [[_dtype_name(p), int(p.size)] for p in parts],
        }
    )
    if len(header) > MAX_HEADER_BYTES:
        raise ValueError(f"message header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    return header


def frame_size(message: GossipMessage) -> int:
    """The length of ``encode(message)``, computed without touching the payload's memory.

    Engines that do not encode (the vectorized one) count bytes on the wire with
    it; a zero-stride ``numpy.broadcast_to`` array stands in for the payload.
    """
    parts = _parts_of(message.payload)
    header = _header(message, parts)
    return _PREFIX.size + len(header) + sum(int(p.size) * p.dtype.itemsize for p in parts)


def encode(message: GossipMessage, prefix: bytes = b"") -> bytes:
    """``prefix`` followed by the frame for ``message``, copied once into one allocation.

    A transport that multiplexes channels passes its tag as ``prefix`` rather
    than copying a model-sized frame again to put a byte in front of it.
    """
    parts = [_le(p) for p in _parts_of(message.payload)]
    header = _header(message, parts)
    fixed = _PREFIX.pack(MAGIC, VERSION, len(header))
    return b"".join([prefix, fixed, header, *(p.view(np.uint8).reshape(-1).data for p in parts)])


def _field(header: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = header.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DecodeError(f"header field {key!r} is missing or has the wrong type")
    return value


def _parse_header(data: memoryview) -> tuple[dict[str, Any], int]:
    if len(data) < _PREFIX.size:
        raise DecodeError("frame shorter than its fixed prefix")
    magic, version, header_len = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise DecodeError("not a gossip frame (bad magic)")
    if version != VERSION:
        raise DecodeError(f"unsupported gossip frame version {version}")
    if header_len > MAX_HEADER_BYTES or _PREFIX.size + header_len > len(data):
        raise DecodeError("header length out of bounds")
    start = _PREFIX.size
    try:
        header = msgpack.unpackb(data[start : start + header_len], strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise DecodeError(f"header is not valid msgpack: {exc}") from None
    if not isinstance(header, dict):
        raise DecodeError("header is not a map")
    return header, start + header_len


def _parts(data: memoryview, offset: int, specs: Any, max_elements: int) -> list[npt.NDArray[Any]]:
    if not isinstance(specs, list) or not 1 <= len(specs) <= 2:
        raise DecodeError("payload must have one or two parts")
    arrays = []
    for spec in specs:
        if (
            not isinstance(spec, list)
            or len(spec) != 2
            or not isinstance(spec[0], str)
            or spec[0] not in _DTYPES
            or not isinstance(spec[1], int)
            or isinstance(spec[1], bool)
            or not 0 <= spec[1] <= max_elements
        ):
            raise DecodeError("bad payload part description")
        dtype = _DTYPES[spec[0]]
        nbytes = spec[1] * dtype.itemsize
        if offset + nbytes > len(data):
            raise DecodeError("payload shorter than its header says")
        arrays.append(np.frombuffer(data, dtype=dtype, count=spec[1], offset=offset))
        offset += nbytes
    if offset != len(data):
        raise DecodeError("trailing bytes after the payload")
    return arrays


def decode(
    data: bytes | bytearray | memoryview, *, max_elements: int = DEFAULT_MAX_ELEMENTS
) -> GossipMessage:
    """Parse one frame; raises ``DecodeError`` for anything that is not a valid frame."""
    view = memoryview(data).cast("B")
    header, offset = _parse_header(view)
    sender = _field(header, "s", str)
    round_ = _field(header, "r", int)
    weight = float(_field(header, "w", (int, float)))
    length = _field(header, "n", int)
    norm = float(_field(header, "m", (int, float)))
    bits = _field(header, "b", int)
    try:
        encoding = Encoding(_field(header, "e", str))
    except ValueError:
        raise DecodeError("unknown payload encoding") from None
    if not 0 <= length <= max_elements:
        raise DecodeError(f"vector length {length} out of bounds")
    parts = _parts(view, offset, header.get("p"), max_elements)
    values = parts[0]
    indices = parts[1] if len(parts) == 2 else None
    if indices is not None and indices.dtype != np.uint32:
        raise DecodeError("top-k indices must be uint32")
    if encoding is Encoding.TOPK:
        if indices is None or values.dtype.kind != "f":
            raise DecodeError("top-k payload needs float values and uint32 indices")
        increasing = bool(np.all(indices[1:] > indices[:-1]))
        if indices.size and (int(indices.max()) >= length or not increasing):
            raise DecodeError("top-k indices must be increasing and below the length")
    elif indices is not None:
        raise DecodeError("only top-k payloads carry indices")
    if encoding is Encoding.QUANTIZED:
        if values.dtype != np.uint8 or not 2 <= bits <= 8:
            raise DecodeError("quantized payload needs uint8 storage and 2-8 bits")
        if values.size != (length * bits + 7) // 8 or not math.isfinite(norm) or norm < 0:
            raise DecodeError("quantized payload has the wrong size or norm")
    if encoding is Encoding.DENSE and (values.dtype.kind != "f" or values.size != length):
        raise DecodeError("dense payload must hold `length` floats")
    try:
        payload = Payload(encoding, length, values, indices, norm, bits)
        return GossipMessage(sender, round_, payload, weight)
    except ValueError as exc:
        raise DecodeError(str(exc)) from None


def dense(values: npt.NDArray[np.floating[Any]]) -> Payload:
    """A dense payload over a 1-D float vector (no copy)."""
    return Payload(Encoding.DENSE, int(values.shape[0]), values)


def peek_round(data: bytes | bytearray | memoryview) -> int:
    """The round of a gossip frame, from its header alone; ``DecodeError`` if it has none.

    For routing a frame to the core of its round's epoch without decoding its payload.
    """
    header, _ = _parse_header(memoryview(data).cast("B"))
    round_ = _field(header, "r", int)
    if round_ < 0:
        raise DecodeError("negative round")
    return int(round_)
