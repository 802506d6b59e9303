"""The ledger's validated view is monotone: a verified record is never lost to another writer.

Anybody who can send a Yjs update can delete or overwrite any entry of the
document. The replica therefore remembers every record it has judged valid
(``NamespaceState.valid_record``) and, after each change, looks at the entries
the change touched (``protocols.ledger_doc`` says which). A valid record that
is gone from its key, or whose key now holds other bytes, is lost; a loss is
accepted only when the record's own author superseded it (a valid record of
the same author and slot with a higher clock, which is how a writer prunes its
older records), or when the key now holds another valid record of the same
author and clock whose bytes sort lower (an author that signed two records for
one key: every replica keeps the lower one, so replicas converge). Any other
loss is a ``Violation``: the record is put back into the document (the repair
is flooded with what the update changed, as one update, so the next replica
sees no loss and blames nobody) and the violation names the link the update
came from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from protocols.ledger_rules import AUTHORITY_MAPS, Authority, Entry, RecordCache, verdict
from protocols.ledger_state import NamespaceState
from protocols.records import Record


@dataclass(frozen=True)
class Violation:
    """A verified record that an update deleted or overwrote, and was put back."""

    origin: str | None  # the link (peer) the update came from; None: this replica's own
    map_name: str
    key: str
    author: str  # who signed the record that was lost
    kind: str  # "deleted" or "overwritten"


def superseded(
    record: Record,
    candidates: Iterable[tuple[str, object]],
    auth: Authority,
    cache: RecordCache,
) -> bool:
    """Whether ``candidates`` (entries of the map) hold a valid record of ``record``'s author
    and slot at a higher clock.

    Only the author's key is checked (its authorization for the slot was checked
    when ``record`` was accepted, and the new record has the same slot).
    """
    verify_key = auth.keys.get(record.author)
    if verify_key is None:
        return False
    prefix = f"{record.slot}@"
    for key, value in candidates:
        if not key.startswith(prefix) or key == record.key:
            continue
        entry = cache.entry(record.map_name, key, value)
        if entry is None or entry.record.author != record.author:
            continue
        if entry.record.clock > record.clock and _signed(entry, auth, verify_key):
            return True
    return False


def yields_to(
    record: Record,
    value: object,
    auth: Authority,
    cache: RecordCache,
) -> bool:
    """Whether ``value``, now under ``record``'s key, is the author's other record that wins."""
    verify_key = auth.keys.get(record.author)
    entry = cache.entry(record.map_name, record.key, value)
    if verify_key is None or entry is None or entry.record.author != record.author:
        return False
    return entry.record.value < record.value and _signed(entry, auth, verify_key)


def _signed(entry: Entry, auth: Authority, verify_key: bytes) -> bool:
    if entry.signature is None:
        entry.signature = entry.record.verifies(auth.federation_id, verify_key)
    return entry.signature and entry.payload_ok


def losses(
    state: NamespaceState,
    entries_of: Callable[[str], Mapping[str, object]],
    changed: Mapping[str, set[str]],
    cache: RecordCache,
    origin: str | None,
) -> tuple[dict[str, dict[str, bytes]], list[Violation]]:
    """What to put back (``map -> {key: value}``), and why: the verified records of the
    ``changed`` keys that are gone or overwritten, bar their author's supersession."""
    puts: dict[str, dict[str, bytes]] = {}
    violations = []
    for name, keys in changed.items():
        if not keys:
            continue
        entries = entries_of(name)
        lost = []  # the verified records of changed keys that hold something else now
        for key in keys:
            record = state.valid_record(name, key)
            if record is not None and entries.get(key) != record.value:
                lost.append((key, record))
        if not lost:
            continue
        by_slot: dict[str, list[str]] = {}  # the changed keys still there, by slot
        for key in keys:
            if key in entries:
                by_slot.setdefault(key.partition("@")[0], []).append(key)
        for key, record in lost:
            now = entries.get(key)
            candidates = [(k, entries[k]) for k in by_slot.get(record.slot, ())]
            candidates += [(k, r.value) for k, r in state.valid_in_slot(name, record.slot).items()]
            if superseded(record, candidates, state.auth, cache):
                continue
            if now is not None and yields_to(record, now, state.auth, cache):
                continue
            kind = "deleted" if now is None else "overwritten"
            violations.append(Violation(origin, name, key, record.author, kind))
            puts.setdefault(name, {})[key] = record.value
    return puts, violations


def restorable(
    state: NamespaceState,
    entries_of: Callable[[str], Mapping[str, object]],
    arrived: Iterable[tuple[tuple[str, str], bytes]],
    cache: RecordCache,
) -> dict[str, dict[str, bytes]]:
    """Valid records that arrived in an update but are not in the document (already deleted
    by an update that overtook them, or overwritten), to put back (``map -> {key: value}``).

    A record counts when its author's key verifies it and, in the namespace maps,
    when the rules accept it; ``members`` and ``revoked`` records are then judged
    with the rest of their maps once they are back. Records their author has
    superseded stay out.
    """
    puts: dict[str, dict[str, bytes]] = {}
    for (name, key), value in arrived:
        now = entries_of(name).get(key)
        if now == value or state.valid_record(name, key) is not None:
            continue
        entry = cache.entry(name, key, value)
        if entry is None or not _acceptable(state, entry):
            continue
        if now is not None:
            current = cache.entry(name, key, now)
            if current is not None and _acceptable(state, current):
                continue
        record = entry.record
        candidates = list(state.valid_in_slot(name, record.slot).items())
        if superseded(record, [(k, r.value) for k, r in candidates], state.auth, cache):
            continue
        puts.setdefault(name, {})[key] = value
    return puts


def _acceptable(state: NamespaceState, entry: Entry) -> bool:
    auth = state.auth
    verify_key = auth.keys.get(entry.record.author)
    if verify_key is None or not _signed(entry, auth, verify_key):
        return False
    return entry.record.map_name in AUTHORITY_MAPS or verdict(auth, entry) is None
