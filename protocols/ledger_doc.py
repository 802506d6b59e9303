"""The ledger's storage: a pycrdt ``Doc`` with one map per kind of record, as raw entries.

``LedgerDoc`` knows nothing of signatures or rules. It applies and produces
Yjs updates, and keeps a plain copy of every map (key -> stored value) that it
brings up to date after each change, reporting which keys changed so that the
validated view (``protocols.ledger``) is recomputed for those entries only.

Foreign bytes (a peer's update or state vector, a file's updates) reach pycrdt
only here, and only through ``_Foreign``: they are first bounded
(``protocols.yjs_bounds``: a few bytes can otherwise make Yrs reserve
gigabytes; an update is checked by the same walk that finds the entries it
touches, ``protocols.yjs_items``), and any failure inside pycrdt, a Rust panic
included, comes out as ``DecodeError``. A Rust panic surfaces as
``pyo3_runtime.PanicException``, a ``BaseException`` that passes every
``except Exception``; left alone it would end the daemon. An update that
fails, or that leaves maps which cannot be read back, is undone: the document
is rebuilt from a snapshot of its encoding and the transactions' updates since
(``_snapshot`` and ``_log``; a snapshot is taken again once the log outweighs
it, right after the update that made it so, so keeping it costs O(1) per byte
changed, not an encoding of the whole document per update) (pycrdt can leave a
panicked transaction half applied), so a failed apply leaves the document
exactly as it was.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pycrdt import Doc, Map, TransactionEvent, merge_updates

from protocols.errors import DecodeError
from protocols.yjs_bounds import DEFAULT_LIMITS, Limits, check_state_vector
from protocols.yjs_items import NOWHERE, ItemIndex, Target, Walk, walk

MAPS = ("members", "revoked", "plan", "approvals", "progress", "secagg", "metrics", "left", "acks")
EMPTY_UPDATE = b"\x00\x00"
MAX_PENDING = 256
"""Entries of updates Yrs holds back that are read back after each change."""
MAX_AHEAD = 4096
"""Walks of updates read ahead (``values_in``) kept for their ``apply_update``."""
_ABSENT = object()


class _Foreign:
    """Turn whatever pycrdt raises on foreign bytes, a Rust panic included, into ``DecodeError``.

    A class, not a generator context manager (which costs a generator per use): it is
    entered twice per update applied.
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if exc is None:
            return
        if isinstance(exc, ValueError):
            raise DecodeError(f"{self.what}: {exc}") from exc
        if _is_panic(exc):
            raise DecodeError(f"{self.what}: pycrdt panicked ({exc})") from None


def _is_panic(exc: BaseException) -> bool:
    """Whether ``exc`` is a Rust panic (pyo3 exports its class from no importable module)."""
    kind = type(exc)
    return kind.__name__ == "PanicException" and kind.__module__ == "pyo3_runtime"


_NOT_AN_UPDATE = _Foreign("not a Yjs update")  # it keeps no state: one serves every update
_UNREADABLE = _Foreign("the update leaves maps that cannot be read")


class LedgerDoc:
    """A Yjs document of the ledger's maps, with garbage collection on."""

    def __init__(self, *, client_id: int | None = None, limits: Limits = DEFAULT_LIMITS) -> None:
        """``client_id`` is the Yjs client id (``None``: pycrdt draws one).

        Two live replicas must never share a client id; pass distinct ids to make
        a simulation reproducible. ``limits`` bounds what one foreign update or
        state vector may cost.
        """
        self.limits = limits
        self._open(Doc(client_id=client_id))
        self._entries: dict[str, dict[str, object]] = {name: {} for name in MAPS}
        self._slots: dict[str, dict[str, set[str]]] = {name: {} for name in MAPS}
        self._changed: defaultdict[str, set[str]] = defaultdict(set)  # maps with changed keys
        self._index = ItemIndex(MAPS)
        self._touched: set[Target] = set()
        self._pending: OrderedDict[tuple[int, int], Target] = OrderedDict()
        self._full = False  # something could not be resolved to its entry: read everything
        self.arrived: list[tuple[Target, bytes]] = []  # values of the last foreign update
        self._txn_updates: list[bytes] = []
        self._applying = False  # within apply_update: the transactions are a foreign update's
        self._walked: tuple[bytes, Walk | None] | None = None  # that update, and its walk
        self._ahead: dict[bytes, Walk | None] = {}  # walks of updates read ahead, by update
        self._snapshot = self.encode_state()
        self._log: list[bytes] = []
        self._log_bytes = 0

    def _open(self, doc: Doc[Any]) -> None:
        """Take ``doc`` as the document; its observer holds this object weakly.

        pycrdt keeps the observer alive as long as the document, and the
        document lives as long as this object: a strong reference would be a
        cycle through Rust that Python's collector cannot see. pycrdt 0.14 also
        keeps about 7 KiB of a document that still has an observer when it is
        dropped; ``close`` (and ``_restore``, for the document it replaces)
        removes the observer first.
        """
        self.doc: Doc[Any] = doc
        self._maps: dict[str, Map[Any]] = {name: doc.get(name, type=Map) for name in MAPS}
        self._native = {name: m.integrated for name, m in self._maps.items()}  # Rust-level maps
        owner = weakref.ref(self)

        def observe(event: TransactionEvent) -> None:
            found = owner()
            if found is not None:
                found._on_transaction(event)

        self._subscription = doc.observe(observe)

    def _on_transaction(self, event: TransactionEvent) -> None:
        update = bytes(event.update)
        if update != EMPTY_UPDATE:
            self._txn_updates.append(update)
            self._log.append(update)
            self._log_bytes += len(update)
            self._note(update, integrated=True, foreign=self._applying)

    def _note(self, update: bytes, *, integrated: bool, foreign: bool = True) -> None:
        """Add the entries ``update`` touches to those to read back.

        ``integrated``: ``update`` is a transaction's own (what Yrs integrated);
        otherwise it is what arrived, some of which Yrs may hold back (or show
        anyway: Yrs 0.28 shows an out-of-order entry before its predecessors),
        so its entries are read back after every change until Yrs integrates it.
        The values of a ``foreign`` update's items are kept in ``arrived``.
        """
        walked = self._walked
        if walked is not None and walked[0] == update:
            found = walked[1]  # the update that arrived, walked when it was checked
        else:
            try:
                found = walk(update)
            except DecodeError:
                found = None
        if found is None:
            self._full = True
            return
        structs, deleted = found
        index, touched = self._index, self._touched
        for struct in structs:
            target = index.target(struct)
            if target is None:
                self._full = True
                continue
            if target == NOWHERE:
                if integrated:
                    index.learn(struct, target)
                continue
            touched.add(target)
            if foreign and struct.value is not None:
                self.arrived.append((target, struct.value))
            if integrated:
                index.learn(struct, target)
                self._pending.pop((struct.client, struct.clock), None)
            elif not index.knows(struct):
                self._pending[(struct.client, struct.clock)] = target
        while len(self._pending) > MAX_PENDING:  # once integrated, its transaction says so
            self._pending.popitem(last=False)
        for client, clock, length in deleted:
            touched.update(index.deleted(client, clock, length))

    @property
    def stale(self) -> bool:
        """Whether the document changed since the copy of the maps was last refreshed."""
        return self._full or bool(self._touched or self.arrived or self._changed)

    def refresh(self) -> dict[str, set[str]]:
        """Re-read the maps after a change; return (and forget) the keys that changed, by map
        (a ``defaultdict``: a map with none reads as an empty set).

        Only the entries that the updates since the last refresh touched are read
        back (``protocols.yjs_items`` resolves their item ids), with those of
        updates Yrs still holds back; everything is read back (one or two µs an
        entry) when an id could not be resolved. pycrdt's per-map events are not
        used: their list of changed keys comes back empty when a node deletes an
        entry that arrived ahead of its predecessors (an out-of-order update,
        which Yrs shows anyway), and computing that list can even panic inside
        Yrs 0.28 (``event_keys``: ``unwrap`` on ``None``), which a peer could
        trigger at will by reordering updates.
        """
        self._update_copy()
        changed, self._changed = self._changed, defaultdict(set)
        return changed

    def _update_copy(self) -> None:
        """Re-read what changed, adding the keys that changed to those not yet returned."""
        if self._full:
            self._reindex()
            fresh = self._read_maps()
            for name, new in fresh.items():
                old = self._entries[name]
                keys = {k for k, v in new.items() if old.get(k) != v}
                keys.update(k for k in old if k not in new)
                if keys:  # _changed holds no empty set (``stale`` relies on it)
                    self._changed[name] |= keys
            self._entries = fresh
            self._slots = {name: {} for name in MAPS}
            for name, entries in fresh.items():
                for key in entries:
                    self._slots[name].setdefault(key.partition("@")[0], set()).add(key)
            self._full = False
        elif self._touched or self._pending:
            targets = self._touched
            if self._pending:
                targets = targets | set(self._pending.values())
            with self.doc.transaction() as txn:
                read = self._reader(txn)
                for name, key in targets:
                    value = read(name, key)
                    known = self._entries[name]
                    if known.get(key, _ABSENT) != value:
                        self._changed[name].add(key)
                        slot = key.partition("@")[0]
                        if value is _ABSENT:
                            del known[key]
                            keys = self._slots[name][slot]
                            keys.discard(key)
                            if not keys:
                                del self._slots[name][slot]
                        else:
                            known[key] = value
                            self._slots[name].setdefault(slot, set()).add(key)
        if self._touched:
            self._touched = set()

    def _reader(self, txn: Any) -> Callable[[str, str], object]:
        """A function of ``(map, key)`` to the entry's value (``_ABSENT`` if none), within ``txn``.

        Reads through pycrdt's Rust-level map with the transaction's ``_txn``, as
        ``_read_maps`` does: ``Map.get`` enters the transaction three times per
        key, about twice as slow (and one of these runs per update).
        Should a later pycrdt lack ``_txn``, the public ``Map.get`` is taken.
        """
        raw_txn = getattr(txn, "_txn", None)
        if raw_txn is None:
            maps = self._maps
            return lambda name, key: maps[name].get(key, _ABSENT)
        native = self._native

        def read(name: str, key: str) -> object:
            found = native[name]
            return found.get(raw_txn, key) if found.has(raw_txn, key) else _ABSENT

        return read

    def _reindex(self) -> None:
        """Learn the item ids of the whole document again (after a full read was needed)."""
        self._index.clear()
        self._pending.clear()
        try:
            found = walk(self.encode_state())
        except DecodeError:
            return
        if found is None:
            return
        waiting = found[0]
        while waiting:  # an origin may come later in the encoding: resolve until stuck
            left = []
            for struct in waiting:
                target = self._index.target(struct)
                if target is None:
                    left.append(struct)
                else:
                    self._index.learn(struct, target)
            if len(left) == len(waiting):
                break
            waiting = left

    def _read_maps(self) -> dict[str, dict[str, object]]:
        """Every map's entries, read in one transaction.

        Reads through pycrdt's Rust-level map (``Map.integrated`` with the
        transaction's ``_txn``): three times faster than ``Map.items()``, which
        checks each key again. Should a later pycrdt lack ``_txn``, the public
        way is taken. (The stateful test compares the copy with ``Map.items()``.)
        """
        with self.doc.transaction() as txn:
            raw_txn = getattr(txn, "_txn", None)
            if raw_txn is None:
                return {name: dict(m.items()) for name, m in self._maps.items()}
            fresh = {}
            for name, m in self._native.items():
                get, keys = m.get, m.keys
                fresh[name] = {key: get(raw_txn, key) for key in keys(raw_txn)}
            return fresh

    def keys_in_slot(self, map_name: str, slot: str) -> frozenset[str]:
        """The keys ``"{slot}@..."`` of the copy of one map (refresh first for the latest)."""
        return frozenset(self._slots[map_name].get(slot, ()))

    def entries(self, map_name: str) -> Mapping[str, object]:
        """The copy of one map (refresh first for the latest); do not modify it."""
        return self._entries[map_name]

    def encode_state(self) -> bytes:
        """The whole document as one Yjs update."""
        return bytes(self.doc.get_update())

    def state_vector(self) -> bytes:
        return bytes(self.doc.get_state())

    @property
    def client_id(self) -> int:
        """The Yjs client id this replica writes under."""
        return int(self.doc.client_id)

    def diff(self, state_vector: bytes) -> bytes:
        """What a replica at ``state_vector`` lacks, as one update; ``DecodeError`` if bad."""
        state_vector = bytes(state_vector)
        check_state_vector(state_vector, self.limits)
        with _Foreign("not a Yjs state vector"):
            return bytes(self.doc.get_update(state_vector))

    def apply_update(self, update: bytes, *, limits: Limits | None = None) -> list[bytes]:
        """Merge a Yjs update; return the updates of what it changed (empty: nothing new).

        Raises ``DecodeError`` when the bytes are not a Yjs update within
        ``limits`` (``None``: the document's), or when pycrdt fails on them; the
        document is then as it was.
        """
        update = bytes(update)
        if limits is None and update in self._ahead:
            walked = self._ahead.pop(update)  # checked when it was read ahead
        else:
            walked = walk(update, self.limits if limits is None else limits)  # checks it
        self._trim_log()  # after local writes
        logged, logged_bytes = len(self._log), self._log_bytes
        self._txn_updates = []
        self.arrived = []
        try:
            self._applying = True
            self._walked = (update, walked)
            with _NOT_AN_UPDATE:
                self.doc.apply_update(update)
            if self._txn_updates != [update]:  # not all of it integrated as it came
                self._note(update, integrated=False)
            with _UNREADABLE:
                self._update_copy()
        except DecodeError:
            del self._log[logged:]
            self._log_bytes = logged_bytes
            self._restore()
            raise
        finally:
            self._applying = False
            self._walked = None
            changed, self._txn_updates = self._txn_updates, []
        self._trim_log()  # here, not before the next one: a file's or a full sync's update
        return changed  # makes the log outweigh the snapshot, not the small update after it

    def values_in(self, update: bytes) -> list[tuple[str, str, bytes]]:
        """``(map, key, value)`` of each byte-string entry ``update`` sets, read ahead of
        applying it (``Ledger.prepare``); none when the bytes are not an update within the
        limits (``apply_update`` will say so). The walk is kept for ``apply_update``."""
        update = bytes(update)
        try:
            walked = walk(update, self.limits)
        except DecodeError:
            return []
        if len(self._ahead) >= MAX_AHEAD:  # read ahead and never applied (a duplicate)
            self._ahead.clear()
        self._ahead[update] = walked
        if walked is None:
            return []
        return [
            (struct.parent, struct.key, struct.value)
            for struct in walked[0]
            if struct.value is not None and struct.parent and struct.key is not None
        ]

    def _trim_log(self) -> None:
        """Take a snapshot again once the log outweighs it (O(1) per byte logged)."""
        if self._log_bytes > len(self._snapshot) + (64 << 10):
            self._snapshot, self._log, self._log_bytes = self.encode_state(), [], 0

    def _restore(self) -> None:
        """Put back the document as the snapshot and the log say it was."""
        self._applying = False  # what is replayed here is this document's own
        doc: Doc[Any] = Doc(client_id=self.doc.client_id)
        self.close()
        self._open(doc)
        self._touched = set()
        self._full = True
        log = self._log
        self._snapshot, self._log, self._log_bytes = self._snapshot, [], 0
        doc.apply_update(self._snapshot)
        for update in log:
            doc.apply_update(update)
        self._snapshot, self._log, self._log_bytes = self.encode_state(), [], 0
        self.arrived = []

    def close(self) -> None:
        """Stop observing the document, so that pycrdt frees it once it is dropped."""
        with contextlib.suppress(DecodeError), _Foreign("closing the document"):
            self.doc.unobserve(self._subscription)

    def transact(self, map_name: str, puts: Mapping[str, bytes], deletes: Iterable[str]) -> bytes:
        """Delete then put entries of one map in one transaction; return its update."""
        self._txn_updates = []
        target = self._maps[map_name]
        with self.doc.transaction():
            for key in deletes:
                del target[key]
            for key, value in puts.items():
                target[key] = value
        made, self._txn_updates = self._txn_updates, []
        return made[0] if len(made) == 1 else bytes(merge_updates(*made)) if made else b""
