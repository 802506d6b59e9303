"""A ledger's view, kept up to date one changed entry at a time.

The namespace maps (``plan``, ``approvals``, ``progress``, ``secagg``,
``metrics``, ``left``, ``acks``) are judged entry by entry against a fixed ``Authority``; when an
entry changes, only its verdict and its slot are recomputed, so a node that
receives a progress update pays for that update, not for the whole ledger. A
change to ``members`` or ``revoked`` changes who may write what: the owner
then rebuilds the state (``NamespaceState.rebuild``), which judges everything
again (signature checks stay cached in the ``RecordCache``).

``evaluate`` is the same computation in one go, as a pure function of content.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import Counter
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from protocols.ledger_rules import (
    NAMESPACE_MAPS,
    Authority,
    Entry,
    LedgerView,
    RecordCache,
    assemble,
    authority,
    check_signatures,
    parse,
    verdict,
)
from protocols.records import Record

Entries = Mapping[str, Iterable[tuple[str, object]]]


class NamespaceState:
    """The verdicts on the namespace maps' entries, under one authority."""

    def __init__(self, auth: Authority, cache: RecordCache) -> None:
        self.auth = auth
        self._cache = cache
        self._verdicts: dict[tuple[str, str], tuple[str | None, Entry | None, object]] = {}
        self._valid: dict[str, dict[str, dict[str, Record]]] = {n: {} for n in NAMESPACE_MAPS}
        self._current: dict[str, dict[str, Record]] = {n: {} for n in NAMESPACE_MAPS}
        self._rejected: Counter[str] = Counter()
        self._authority_records = {(r.map_name, r.key): r for r in auth.valid}
        self._authority_slots: dict[tuple[str, str], list[Record]] = {}
        for record in auth.valid:
            self._authority_slots.setdefault((record.map_name, record.slot), []).append(record)
        self._base = base = assemble(auth, {}, Counter(), 0)
        current = dict(base.current)  # read-only views of this state's own, live
        current.update((name, MappingProxyType(s)) for name, s in self._current.items())
        self._current_view: Mapping[str, Mapping[str, Record]] = current
        self._rejections: dict[str, int] | None = None  # the view's, until _rejected changes
        self._clocks: Counter[int] = Counter()  # the current records' clocks
        self._heap: list[int] = []  # their negatives, with stale ones popped lazily

    @classmethod
    def rebuild(cls, federation_id: str, entries: Entries, cache: RecordCache) -> NamespaceState:
        """Judge every entry afresh; forget cached entries that are gone."""
        malformed: Counter[str] = Counter()
        member_pairs = list(entries.get("members", ()))
        cache.examine("members", member_pairs)  # their box keys, on the free cores in a node
        members = parse("members", member_pairs, cache, malformed)
        revocations = parse("revoked", entries.get("revoked", ()), cache, malformed)
        claimed = {e.record.slot: e.member.verify_key for e in members if e.member is not None}
        check_signatures(federation_id, [*members, *revocations], claimed, cache.checks)
        auth = authority(federation_id, members, revocations, malformed["malformed"])
        state = cls(auth, cache)
        namespace = {name: list(entries.get(name, ())) for name in NAMESPACE_MAPS}
        found = [
            entry
            for name, pairs in namespace.items()
            for key, value in pairs
            if (entry := cache.entry(name, key, value)) is not None
        ]
        check_signatures(federation_id, found, auth.keys, cache.checks)
        for name, pairs in namespace.items():
            for key, value in pairs:
                state.put(name, key, value)
        cache.sweep()
        return state

    def put(self, map_name: str, key: str, value: object | None) -> None:
        """The entry ``key`` of ``map_name`` now holds ``value`` (``None``: deleted)."""
        verdict_before = self._verdicts.get((map_name, key))
        if verdict_before is not None:
            if value is not None and verdict_before[2] == value:
                return
            self._remove(map_name, key)
        if value is None:
            return
        entry = self._cache.entry(map_name, key, value)
        reason = "malformed" if entry is None else verdict(self.auth, entry)
        self._verdicts[(map_name, key)] = (reason, entry, value)
        if reason is not None or entry is None:
            self._rejected[reason or "malformed"] += 1
            self._rejections = None
            return
        record = entry.record
        self._valid[map_name].setdefault(record.slot, {})[key] = record
        known = self._current[map_name].get(record.slot)
        if known is None or record.clock > known.clock:
            self._set_current(map_name, record.slot, record)

    def _remove(self, map_name: str, key: str) -> None:
        old = self._verdicts.pop((map_name, key), None)
        if old is None:
            return
        reason, entry, value = old
        self._cache.forget(map_name, key, value)
        if reason is not None or entry is None:
            self._rejected[reason or "malformed"] -= 1
            self._rejections = None
            return
        slot = entry.record.slot
        records = self._valid[map_name][slot]
        del records[key]
        if not records:
            del self._valid[map_name][slot]
            self._set_current(map_name, slot, None)
        elif self._current[map_name][slot].key == key:
            self._set_current(map_name, slot, max(records.values(), key=lambda r: r.clock))

    def _set_current(self, map_name: str, slot: str, record: Record | None) -> None:
        """Make ``record`` the slot's current one (``None``: the slot has none)."""
        slots = self._current[map_name]
        old = slots.pop(slot, None)
        if old is not None:
            self._clocks[old.clock] -= 1
        if record is not None:
            slots[slot] = record
            clocks = self._clocks
            clocks[record.clock] = clocks.get(record.clock, 0) + 1  # a new clock, mostly
            heapq.heappush(self._heap, -record.clock)
        if len(self._heap) > 2 * len(self._clocks) + 64:  # drop what lingers below the top
            self._clocks = +self._clocks
            self._heap = [-clock for clock in self._clocks]
            heapq.heapify(self._heap)

    def _max_clock(self) -> int:
        """The highest clock of a current record, in O(log n) amortized."""
        heap = self._heap
        while heap and self._clocks[-heap[0]] <= 0:
            self._clocks.pop(-heapq.heappop(heap), None)
        return -heap[0] if heap else 0

    def valid_in_slot(self, map_name: str, slot: str) -> dict[str, Record]:
        """The valid records of one slot, by key."""
        if map_name in NAMESPACE_MAPS:
            return dict(self._valid[map_name].get(slot, {}))
        return {r.key: r for r in self._authority_slots.get((map_name, slot), ())}

    def valid_record(self, map_name: str, key: str) -> Record | None:
        """The record judged valid under ``key`` (current or stale), if there is one."""
        if map_name not in NAMESPACE_MAPS:
            return self._authority_records.get((map_name, key))
        known = self._verdicts.get((map_name, key))
        if known is None or known[0] is not None or known[1] is None:
            return None
        return known[1].record

    def view(self) -> LedgerView:
        """The view, in O(maps): its namespace maps are read-only views of this state's own,
        so a view shows the state as it is when read, not as it was when taken."""
        base = self._base
        rejections = self._rejections
        if rejections is None:
            rejections = self._rejections = dict(Counter(base.rejections) + self._rejected)
        return LedgerView(  # not dataclasses.replace: twice as slow, once per update
            founder=base.founder,
            name=base.name,
            genesis_key=base.genesis_key,
            members=base.members,
            admins=base.admins,
            revoked=base.revoked,
            current=self._current_view,
            rejections=rejections,
            max_clock=max(base.max_clock, self._max_clock()),
        )


def evaluate(federation_id: str, entries: Entries, cache: RecordCache) -> LedgerView:
    """The view of a ledger whose maps hold ``entries`` (``map -> [(key, value)]``), as a
    snapshot."""
    view = NamespaceState.rebuild(federation_id, entries, cache).view()
    current = {name: dict(slots) for name, slots in view.current.items()}
    return dataclasses.replace(view, current=current)
