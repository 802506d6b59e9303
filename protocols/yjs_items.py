"""Which map entries a Yjs update touches, read from its item ids, building nothing.

A v1 update is a list of structs per client and a delete set of id ranges.
An item that starts a map entry names its parent (a root type, by name) and
its key; an item that replaces an entry names only its left origin, the item
it replaces; a deletion names only ids. ``ItemIndex`` remembers, for every
item id it was shown, the ``(map, key)`` it belongs to (or that it belongs to
none of the ledger's maps), so that any later struct or deletion is resolved
to the entry it touches in a dictionary look-up. The ledger's document reads
back those entries only, instead of every map (``protocols.ledger_doc``).

The walk follows the layout that ``protocols.yjs_bounds`` checks (and is run
only on bytes that passed it, or that Yrs itself encoded).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from protocols.errors import DecodeError
from protocols.yjs_bounds import (
    _ANY,
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


@dataclass(frozen=True, slots=True)
class Struct:
    """One item of an update: its id run, and where it says it belongs."""

    client: int
    clock: int
    length: int
    origin: tuple[int, int] | None  # the left origin, else the right one
    parent: str | None  # a root type's name, when the item names it
    key: str | None  # the map key, when the item names it
    gc: bool = False  # a garbage-collected run or a skip: no item at all
    value: bytes | None = None  # the content, when it is one byte string (a ledger value)


def walk(update: bytes) -> tuple[list[Struct], list[tuple[int, int, int]]]:
    """``(structs, deleted)`` of a v1 update; ``deleted`` holds ``(client, clock, length)``."""
    reader = _Reader(bytes(update), _WALK_LIMITS)
    structs: list[Struct] = []
    for _ in range(reader.count(3, "update clients")):
        count = reader.count(2, "structs")
        client = reader.var(MAX_CLIENT, "client id")
        clock = reader.clock("start clock")
        for _ in range(count):
            struct = _struct(reader, client, clock)
            structs.append(struct)
            clock += struct.length
    deleted = []
    for _ in range(reader.count(2, "delete set clients")):
        client = reader.var(MAX_CLIENT, "client id")
        for _ in range(reader.count(2, "delete ranges")):
            deleted.append((client, reader.clock("deleted clock"), reader.length("length")))
    reader.end()
    return structs, deleted


def _text(reader: _Reader, what: str) -> str:
    n = reader.blob(what)
    try:
        return reader.data[reader.pos - n : reader.pos].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what} is not UTF-8") from exc


def _id(reader: _Reader, what: str) -> tuple[int, int]:
    return reader.var(MAX_CLIENT, f"{what} client"), reader.clock(f"{what} clock")


def _struct(reader: _Reader, client: int, clock: int) -> Struct:
    info = reader.byte()
    if info in (_GC, _SKIP):
        return Struct(client, clock, reader.length("length"), None, None, None, gc=True)
    origin = right = None
    if info & _HAS_ORIGIN:
        origin = _id(reader, "left origin")
    if info & _HAS_RIGHT_ORIGIN:
        right = _id(reader, "right origin")
    parent = key = None
    if not info & (_HAS_ORIGIN | _HAS_RIGHT_ORIGIN):
        if reader.var(MAX_CLOCK, "parent info") == 1:
            parent = _text(reader, "parent name")
        else:
            _id(reader, "parent")
            parent = ""  # nested content: no ledger map
        if info & _HAS_PARENT_SUB:
            key = _text(reader, "map key")
    start = reader.pos
    length = _content(reader, info & 0x0F)
    value = None
    raw = reader.data[start : reader.pos]
    if info & 0x0F == _ANY and raw[:2] == b"\x01\x74":  # one value, a byte string
        sub = _Reader(raw[2:], _WALK_LIMITS)
        n = sub.blob("value")
        if sub.pos == len(raw) - 2:
            value = raw[2 + sub.pos - n : 2 + sub.pos]
    return Struct(client, clock, length, origin or right, parent, key, value=value)


def _content(reader: _Reader, ref: int) -> int:
    """Skip an item's content; return how many clocks it takes.

    A string takes one clock per UTF-16 unit (``yjs_bounds`` counts its bytes, an
    upper bound); every other content is skipped and counted as ``yjs_bounds`` does.
    """
    if ref == _STRING:
        n = reader.blob("string")
        text = reader.data[reader.pos - n : reader.pos].decode("utf-8", "replace")
        return max(1, len(text.encode("utf-16-le")) // 2)
    return skip_content(reader, ref)


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
        if struct.length <= _MAX_INDEXED_RUN:
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
