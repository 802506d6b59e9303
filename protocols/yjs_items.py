"""Which map entries a Yjs update touches, read from its item ids, building nothing.

A v1 update is a list of structs per client and a delete set of id ranges.
An item that starts a map entry names its parent (a root type, by name) and
its key; an item that replaces an entry names only its left origin, the item
it replaces; a deletion names only ids. ``ItemIndex`` remembers, for every
item id it was shown, the ``(map, key)`` it belongs to (or that it belongs to
none of the ledger's maps), so that any later struct or deletion is resolved
to the entry it touches in a dictionary look-up. The ledger's document reads
back those entries only, instead of every map (``protocols.ledger_doc``).

The walk follows the layout that ``protocols.yjs_bounds`` checks. Given
``Limits``, it also checks what ``check_update`` checks, in the same pass, so
that a foreign update is read once; without, it is run only on bytes that
passed that check or that Yrs itself encoded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from protocols.errors import DecodeError
from protocols.yjs_bounds import (
    _ANY,
    _ANY_BUFFER,
    _GC,
    _HAS_ORIGIN,
    _HAS_PARENT_SUB,
    _HAS_RIGHT_ORIGIN,
    _SKIP,
    _STRING,
    MAX_CLIENT,
    MAX_CLOCK,
    Limits,
    _Reader,
)
from protocols.yjs_bounds import _content as skip_content

Target = tuple[str, str]
"""A ledger map entry: ``(map_name, key)``."""
NOWHERE = ("", "")
"""An item that is no entry of a ledger map (nested content, another root type)."""
_WALK_LIMITS = Limits(max_bytes=1 << 31, max_elements=1 << 40)
_MAX_INDEXED_RUN = 64


class Struct(NamedTuple):
    """One item of an update: its id run, and where it says it belongs."""

    client: int
    clock: int
    length: int
    origin: tuple[int, int] | None  # the left origin, else the right one
    parent: str | None  # a root type's name, when the item names it
    key: str | None  # the map key, when the item names it
    gc: bool = False  # a garbage-collected run or a skip: no item at all
    value: bytes | None = None  # the content, when it is one byte string (a ledger value)


Walk = tuple[list[Struct], list[tuple[int, int, int]]]
"""``(structs, deleted)`` of an update; ``deleted`` holds ``(client, clock, length)``."""


def walk(update: bytes, limits: Limits | None = None) -> Walk | None:
    """``(structs, deleted)`` of a v1 update, or ``None`` when a name in it is not UTF-8.

    With ``limits``, the walk also checks the update as ``yjs_bounds.check_update``
    does, in the same pass: it raises ``DecodeError`` for exactly the bytes that
    ``check_update(update, limits)`` refuses (a foreign update is then read once,
    not once to check it and once to resolve its entries). Without, it is run only
    on bytes that passed that check or that Yrs itself encoded.
    """
    data = bytes(update)
    checked = limits is not None
    if limits is not None and len(data) > limits.max_bytes:
        raise DecodeError(f"a Yjs encoding of {len(data)} bytes is over {limits.max_bytes}")
    reader = _Reader(data, _WALK_LIMITS if limits is None else limits)
    one = _one_entry(reader)
    if one is not None:
        return [one], []
    structs: list[Struct] = []
    seen: set[int] = set()
    for _ in range(reader.count(3, "update clients")):
        count = reader.count(2, "structs")
        client = reader.var(MAX_CLIENT, "client id")
        if checked:
            if client in seen:  # as check_update refuses it (a SIGSEGV in Yrs)
                raise DecodeError(f"client {client} has two blocks of structs in one update")
            seen.add(client)
        clock = bound = reader.clock("start clock")
        for _ in range(count):
            struct = _entry(reader, client, clock)
            if struct is None:
                struct, moved = _struct(reader, client, clock)
            else:
                moved = 1
            structs.append(struct)
            clock += struct.length
            bound += moved
            if checked and bound > MAX_CLOCK:
                raise DecodeError(f"a client's clock runs past {MAX_CLOCK}")
    deleted = []
    for _ in range(reader.count(2, "delete set clients")):
        client = reader.var(MAX_CLIENT, "client id")
        for _ in range(reader.count(2, "delete ranges")):
            start = reader.clock("deleted clock")
            length = reader.length("deleted length")
            if checked and start + length > MAX_CLOCK:
                raise DecodeError(f"a deleted range runs past {MAX_CLOCK}")
            deleted.append((client, start, length))
    reader.end()
    return (structs, deleted) if reader.readable else None


def _one_entry(reader: _Reader) -> Struct | None:
    """The struct of an update that sets one entry of a root map and deletes nothing (every
    record a writer adds comes so), read without the general loop; else ``None``, with
    ``reader`` where it was.

    Its layout: one client, one struct, the client's id and start clock, the entry
    (``_entry``), and an empty delete set. The counts cost what the general reading
    charges (two elements before the entry), so both refuse and find alike.
    """
    data = reader.data
    if len(data) < 8 or data[0] != 1 or data[1] != 1 or data[-1] != 0:
        return None
    reader.pos, reader.elements = 2, 2
    struct = None
    try:
        client = reader.var(MAX_CLIENT, "client id")
        clock = reader.clock("start clock")
    except DecodeError:
        pass  # the general reading says why
    else:
        if clock < MAX_CLOCK:  # _entry refuses what the element budget would
            struct = _entry(reader, client, clock)
    if struct is None or reader.pos != len(data) - 1:
        reader.pos, reader.elements = 0, 0
        return None
    reader.pos += 1
    return struct


_ENTRY_INFO = _ANY | _HAS_PARENT_SUB
"""The info byte of an item that sets a key of a map, with no origin: a new ledger entry."""


def _entry(reader: _Reader, client: int, clock: int) -> Struct | None:
    """The next struct when it sets a key of a root map to one byte string, else ``None``.

    Every record a writer adds is such an item, so it is read here byte by byte:
    its info byte, a named parent, the parent's name and the key (each under 128
    bytes and UTF-8), one ``Any`` value that is a buffer (its length in one or two
    bytes) and nothing past the end of the update. Anything else, or anything
    ``_struct`` would refuse (the element budget, the nesting depth), is left to
    ``_struct``, from the same position: both read this shape alike (the tests
    compare them on mutated updates), this one without a call per field.
    """
    data, pos = reader.data, reader.pos
    end = len(data)
    if end - pos < 4 or data[pos] != _ENTRY_INFO or data[pos + 1] != 1:
        return None
    name_start = pos + 3
    name_end = name_start + data[pos + 2]
    if data[pos + 2] >= 0x80 or name_end >= end:
        return None
    key_start = name_end + 1
    key_end = key_start + data[name_end]
    if data[name_end] >= 0x80 or key_end + 3 > end:
        return None
    if data[key_end] != 1 or data[key_end + 1] != _ANY_BUFFER:
        return None
    at = key_end + 2  # the value's length
    if data[at] < 0x80:
        n, at = data[at], at + 1
    elif at + 1 < end and data[at + 1] < 0x80:
        n, at = (data[at] & 0x7F) | (data[at + 1] << 7), at + 2
    else:
        return None
    limits = reader.limits
    if at + n > end or reader.elements >= limits.max_elements or limits.max_depth < 1:
        return None
    try:
        parent = data[name_start:name_end].decode("utf-8")
        key = data[key_start:key_end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    reader.elements += 1  # the one value, as _struct charges it
    reader.pos = at + n
    return Struct(client, clock, 1, None, parent, key, False, data[at : at + n])


def _text(reader: _Reader, what: str) -> str:
    n = reader.blob(what)
    try:
        return reader.data[reader.pos - n : reader.pos].decode("utf-8")
    except UnicodeDecodeError:
        reader.readable = False
        return ""


def _id(reader: _Reader, client: str, clock: str) -> tuple[int, int]:
    """An item id; ``client`` and ``clock`` name its parts in errors."""
    return reader.var(MAX_CLIENT, client), reader.clock(clock)


def _struct(reader: _Reader, client: int, clock: int) -> tuple[Struct, int]:
    """The next struct, and how far ``check_update`` counts it to move the clock."""
    info = reader.byte()
    if info in (_GC, _SKIP):
        length = reader.length("length")
        return Struct(client, clock, length, None, None, None, True), length
    origin = right = None
    if info & _HAS_ORIGIN:
        origin = _id(reader, "left origin client", "left origin clock")
    if info & _HAS_RIGHT_ORIGIN:
        right = _id(reader, "right origin client", "right origin clock")
    parent = key = None
    if not info & (_HAS_ORIGIN | _HAS_RIGHT_ORIGIN):
        if reader.var(MAX_CLOCK, "parent info") == 1:
            parent = _text(reader, "parent name")
        else:
            _id(reader, "parent client", "parent clock")
            parent = ""  # nested content: no ledger map
        if info & _HAS_PARENT_SUB:
            key = _text(reader, "map key")
    start = reader.pos
    ref = info & 0x0F
    data = reader.data
    value = None
    if ref == _STRING:
        n = reader.blob("string")
        text = data[reader.pos - n : reader.pos].decode("utf-8", "replace")
        length, moved = max(1, len(text.encode("utf-16-le")) // 2), n
    else:
        length = moved = skip_content(reader, ref)
        if ref == _ANY and data[start : start + 2] == b"\x01\x74":  # one value, a byte string
            sub = _Reader(data, _WALK_LIMITS)
            sub.pos = start + 2
            n = sub.blob("value")
            if sub.pos == reader.pos:
                value = data[sub.pos - n : sub.pos]
    return Struct(client, clock, length, origin or right, parent, key, False, value), moved


class ItemIndex:
    """Item id -> the ledger map entry it belongs to, for every item shown to ``learn``."""

    def __init__(self, maps: Iterable[str]) -> None:
        self._maps = frozenset(maps)
        self._ids: dict[tuple[int, int], Target] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def target(self, struct: Struct) -> Target | None:
        """The entry ``struct`` touches, ``NOWHERE``, or ``None`` when it cannot be told."""
        if struct.gc:
            return NOWHERE
        if struct.parent is not None:
            if struct.parent in self._maps and struct.key is not None:
                return (struct.parent, struct.key)
            return NOWHERE
        assert struct.origin is not None  # an item names a parent or an origin
        return self._ids.get(struct.origin)

    def learn(self, struct: Struct, target: Target) -> None:
        """Remember the ids of ``struct`` (its first and last only, for a long run)."""
        if struct.gc:
            return
        ids = self._ids
        if struct.length == 1:  # a ledger value: one item
            ids[(struct.client, struct.clock)] = target
        elif struct.length <= _MAX_INDEXED_RUN:
            for clock in range(struct.clock, struct.clock + struct.length):
                ids[(struct.client, clock)] = target
        else:
            ids[(struct.client, struct.clock)] = target
            ids[(struct.client, struct.clock + struct.length - 1)] = target

    def knows(self, struct: Struct) -> bool:
        return (struct.client, struct.clock) in self._ids

    def deleted(self, client: int, clock: int, length: int) -> set[Target]:
        """The entries whose items lie in a deleted range (items never shown are skipped)."""
        ids = self._ids
        if length <= _MAX_INDEXED_RUN:
            found = (ids.get((client, c)) for c in range(clock, clock + length))
        else:
            found = (t for (c, k), t in ids.items() if c == client and clock <= k < clock + length)
        return {t for t in found if t is not None and t != NOWHERE}

    def clear(self) -> None:
        self._ids.clear()
