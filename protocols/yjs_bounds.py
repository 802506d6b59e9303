"""What a Yjs update or state vector may cost, checked before pycrdt reads it.

Yrs (pycrdt's Rust core) reserves memory for the counts that an encoding
declares before it reads what they count: the seven bytes ``ff ff ff ff 01 85
c2`` as a state vector made a replica's peak memory grow by 1 GiB, four bytes
declaring a client count by 512 MiB, and 17 bytes declaring a map of 2^27
values by 282 MiB (measured with yrs 0.28). Clocks near 2^32 make it panic
while integrating. A member could do either to its neighbours with a few
bytes, so every foreign encoding is walked here first, in the lib0 v1 layout
that Yrs reads (``Update::decode``, ``StateVector::decode``, ``IdSet::decode``),
building nothing:

- every count is at most the bytes that remain divided by the fewest bytes one
  counted element takes, so what Yrs reserves is proportional to the input;
- every string, buffer and varint fits in the bytes that remain;
- the elements Yrs allocates one by one (clients, structs, ``Any`` values,
  delete ranges) total at most ``Limits.max_elements``, and ``Any`` values nest
  at most ``Limits.max_depth`` deep (Yrs reads them recursively);
- every clock, and every clock plus a length, stays below 2^31, no run of clocks
  is empty, client ids fit in 53 bits, and nothing follows the encoding;
- each client's structs come in one block, as every encoder writes them: two
  blocks of one client with overlapping clocks made pycrdt 0.14.13 crash the
  process (SIGSEGV) on the next read of the map (tests/fuzz_cases/).

pycrdt itself offers no inspection short of a full decode (``get_state`` of an
update runs the same decoder), hence this walk. It accepts the contents the
ledger's document can hold (maps of values, their deletions and garbage
collection, and the other plain types) and refuses JSON content (deprecated in
Yjs), weak links and subdocuments, which the ledger never writes.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.errors import DecodeError

MAX_CLOCK = (1 << 31) - 1
MAX_CLIENT = (1 << 53) - 1
_MAX_VARINT_BYTES = 10

# Struct info byte (yrs block.rs): the low bits name the content, the high bits the origins.
_GC, _SKIP = 0, 10
_DELETED, _JSON, _BINARY, _STRING, _EMBED, _FORMAT, _TYPE, _ANY, _DOC = range(1, 10)
_HAS_ORIGIN, _HAS_RIGHT_ORIGIN, _HAS_PARENT_SUB = 0x80, 0x40, 0x20
# Type refs (yrs types/mod.rs) that carry nothing more, and the one that carries a name.
_PLAIN_TYPES = frozenset({0, 1, 2, 4, 5, 6, 15})
_XML_ELEMENT = 3
# Any tags (lib0): fixed-size values, strings, containers.
_ANY_FIXED = {127: 0, 126: 0, 124: 4, 123: 8, 122: 8, 121: 0, 120: 0}
_ANY_INT, _ANY_STRING, _ANY_MAP, _ANY_ARRAY, _ANY_BUFFER = 125, 119, 118, 117, 116


@dataclass(frozen=True)
class Limits:
    """What one update may ask of a replica; ``DecodeError`` beyond it."""

    max_bytes: int = 64 << 20
    max_elements: int = 1 << 20
    max_depth: int = 32


DEFAULT_LIMITS = Limits()


class _Reader:
    """A cursor over lib0 v1 bytes that counts what Yrs would allocate.

    Every update a replica receives is read through it, so the one-byte varints
    (most of them) are read inline by the methods that take one, not through ``var``.
    """

    __slots__ = ("data", "elements", "limits", "pos", "readable")

    def __init__(self, data: bytes, limits: Limits) -> None:
        self.data = data
        self.pos = 0
        self.limits = limits
        self.elements = 0
        self.readable = True  # for yjs_items: every name it decoded was UTF-8

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise DecodeError("truncated Yjs encoding")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def var(self, hi: int, what: str) -> int:
        """An unsigned lib0 varint of at most ``hi``."""
        pos, data = self.pos, self.data
        if pos < len(data) and data[pos] < 0x80:  # one byte: most of them
            self.pos = pos + 1
            if data[pos] > hi:
                raise DecodeError(f"{what} {data[pos]} is over {hi}")
            return data[pos]
        value, shift, end = 0, 0, len(data)
        for _ in range(_MAX_VARINT_BYTES):  # the bytes read here, not through byte(): client
            if pos >= end:  # ids take eight, and an update names several
                raise DecodeError("truncated Yjs encoding")
            b = data[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            if b < 0x80:
                self.pos = pos
                if value > hi:
                    raise DecodeError(f"{what} {value} is over {hi}")
                return value
            shift += 7
        raise DecodeError(f"{what}: a varint longer than {_MAX_VARINT_BYTES} bytes")

    def skip_var(self) -> None:
        """A signed or unsigned varint whose value does not matter here."""
        for _ in range(_MAX_VARINT_BYTES):
            if self.byte() < 0x80:
                return
        raise DecodeError(f"a varint longer than {_MAX_VARINT_BYTES} bytes")

    def skip(self, n: int, what: str) -> None:
        if n > self.remaining():
            raise DecodeError(f"{what} of {n} bytes with {self.remaining()} left")
        self.pos += n

    def blob(self, what: str) -> int:
        """A length-prefixed string or buffer; returns its length in bytes."""
        pos, data = self.pos, self.data
        hi = len(data) - pos  # the length: at most what is left
        if pos < len(data) and data[pos] < 0x80 and data[pos] <= hi:
            n = data[pos]
            self.pos = pos + 1 + n
            return n
        n = self.var(hi, what)
        self.pos += n
        return n

    def count(self, min_size: int, what: str) -> int:
        """A count of elements of at least ``min_size`` bytes each, charged to the budget."""
        pos, data = self.pos, self.data
        hi = (len(data) - pos) // min_size
        if pos < len(data) and data[pos] < 0x80 and data[pos] <= hi:
            n = data[pos]
            self.pos = pos + 1
        else:
            n = self.var(hi, what)
        self.elements += n
        if self.elements > self.limits.max_elements:
            raise DecodeError(f"more than {self.limits.max_elements} elements in one update")
        return n

    def clock(self, what: str) -> int:
        pos, data = self.pos, self.data
        if pos < len(data) and data[pos] < 0x80:  # below MAX_CLOCK
            self.pos = pos + 1
            return data[pos]
        return self.var(MAX_CLOCK, what)

    def length(self, what: str) -> int:
        """A run of clocks: at least one (Yrs mishandles empty runs; no encoder writes them)."""
        value = self.var(MAX_CLOCK, what)
        if value == 0:
            raise DecodeError(f"{what} 0")
        return value

    def end(self) -> None:
        if self.remaining():
            raise DecodeError(f"{self.remaining()} bytes after the Yjs encoding")


def check_state_vector(data: bytes, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise ``DecodeError`` unless ``data`` is a state vector within ``limits``."""
    reader = _start(data, limits)
    for _ in range(reader.count(2, "state vector clients")):
        reader.var(MAX_CLIENT, "client id")
        reader.clock("clock")
    reader.end()


def state_vector_clocks(data: bytes, limits: Limits = DEFAULT_LIMITS) -> dict[int, int]:
    """A state vector's clocks, client by client; ``DecodeError`` unless it is one."""
    reader = _start(data, limits)
    clocks: dict[int, int] = {}
    for _ in range(reader.count(2, "state vector clients")):
        client = reader.var(MAX_CLIENT, "client id")
        clocks[client] = reader.clock("clock")
    reader.end()
    return clocks


def check_update(data: bytes, limits: Limits = DEFAULT_LIMITS) -> None:
    """Raise ``DecodeError`` unless ``data`` is a v1 update within ``limits``."""
    reader = _start(data, limits)
    seen: set[int] = set()
    for _ in range(reader.count(3, "update clients")):
        structs = reader.count(2, "structs")
        client = reader.var(MAX_CLIENT, "client id")
        if client in seen:  # Yrs' block store breaks on overlapping blocks (a SIGSEGV)
            raise DecodeError(f"client {client} has two blocks of structs in one update")
        seen.add(client)
        clock = reader.clock("start clock")
        for _ in range(structs):
            clock += _struct(reader)
            if clock > MAX_CLOCK:
                raise DecodeError(f"a client's clock runs past {MAX_CLOCK}")
    _delete_set(reader)
    reader.end()


def _start(data: bytes, limits: Limits) -> _Reader:
    if len(data) > limits.max_bytes:
        raise DecodeError(f"a Yjs encoding of {len(data)} bytes is over {limits.max_bytes}")
    return _Reader(bytes(data), limits)


def _struct(reader: _Reader) -> int:
    """Skip one struct; return how far it moves its client's clock (an upper bound)."""
    info = reader.byte()
    if info in (_GC, _SKIP):
        return reader.length("length")
    if info & _HAS_ORIGIN:
        _id(reader, "left origin client", "left origin clock")
    if info & _HAS_RIGHT_ORIGIN:
        _id(reader, "right origin client", "right origin clock")
    if not info & (_HAS_ORIGIN | _HAS_RIGHT_ORIGIN):
        if reader.var(MAX_CLOCK, "parent info") == 1:
            reader.blob("parent name")
        else:
            _id(reader, "parent client", "parent clock")
        if info & _HAS_PARENT_SUB:
            reader.blob("map key")
    return _content(reader, info & 0x0F)


def _id(reader: _Reader, client: str, clock: str) -> None:
    """An item id; ``client`` and ``clock`` name its parts in errors."""
    reader.var(MAX_CLIENT, client)
    reader.clock(clock)


def _content(reader: _Reader, ref: int) -> int:
    if ref == _DELETED:
        return reader.length("deleted length")
    if ref == _STRING:
        return reader.blob("string")
    if ref in (_BINARY, _EMBED):
        reader.blob("content")
    elif ref == _FORMAT:
        reader.blob("format key")
        reader.blob("format value")
    elif ref == _TYPE:
        _type_ref(reader)
    elif ref == _ANY:
        n = reader.count(1, "values")
        for _ in range(n):
            _any(reader, 1)
        return n
    else:
        raise DecodeError(f"struct content {ref} is not accepted in a ledger update")
    return 1


def _type_ref(reader: _Reader) -> None:
    ref = reader.var(0xFF, "type ref")
    if ref == _XML_ELEMENT:
        reader.blob("element name")
    elif ref not in _PLAIN_TYPES:
        raise DecodeError(f"type ref {ref} is not accepted in a ledger update")


def _any(reader: _Reader, depth: int) -> None:
    if depth > reader.limits.max_depth:
        raise DecodeError(f"values nested deeper than {reader.limits.max_depth}")
    tag = reader.byte()
    if tag in _ANY_FIXED:
        reader.skip(_ANY_FIXED[tag], "a number")
    elif tag == _ANY_INT:
        reader.skip_var()
    elif tag in (_ANY_STRING, _ANY_BUFFER):
        reader.blob("value")
    elif tag == _ANY_ARRAY:
        for _ in range(reader.count(1, "array items")):
            _any(reader, depth + 1)
    elif tag == _ANY_MAP:
        for _ in range(reader.count(2, "map entries")):
            reader.blob("map key")
            _any(reader, depth + 1)
    else:
        raise DecodeError(f"unknown value tag {tag}")


def _delete_set(reader: _Reader) -> None:
    for _ in range(reader.count(2, "delete set clients")):
        reader.var(MAX_CLIENT, "client id")
        for _ in range(reader.count(2, "delete ranges")):
            start = reader.clock("deleted clock")
            if start + reader.length("deleted length") > MAX_CLOCK:
                raise DecodeError(f"a deleted range runs past {MAX_CLOCK}")
