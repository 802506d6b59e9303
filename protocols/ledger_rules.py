"""Who may write what: the ledger's validity rules, as pure functions of its content.

``authority(...)`` reads ``members`` and ``revoked`` and says who the founder,
the admins, the members and the revoked are; ``verdict(authority, entry)`` then
judges any record of the other maps on its own, and ``assemble`` makes the
``LedgerView``. Everything depends on the document's content only, never on the
order in which updates arrived, so replicas holding the same document show the
same view. ``protocols.ledger_state`` drives these functions: all at once
(``evaluate``) or one changed entry at a time.

The rules, in the order they are applied:

1. Genesis. The founder's genesis record is the ``members`` entry whose value
   hashes to the federation id (``records.federation_id_for``). It is signed
   with an empty federation id (the id does not exist before it), its slot and
   author are the founder's node id, and its payload carries the founder's keys.
2. Founder. The founder writes any slot of ``members`` (granting ``admin`` or
   not), revokes anybody but itself, and alone writes ``plan``.
3. Admins are the members whose latest founder-written member record grants
   ``admin`` and whom the founder has not revoked. An admin admits and revokes
   members that are neither admins nor the founder, and grants no ``admin``.
4. Revocation is permanent and total: every record authored by a revoked
   node is rejected (``"revoked"``), including members it admitted, which
   stop being members unless the founder or another admin admitted them too.
5. Own namespace: ``approvals``, ``progress``, ``left``, ``acks`` (slot = node
   id) and ``secagg``, ``metrics`` (slot = ``"{round}/{node_id}"``) are written
   only by that node.
6. A member record's slot is ``node_id_for(verify_key)`` and its ``box_key``
   is the X25519 key derived from ``verify_key``: a node id cannot be claimed
   by another key.
7. Of the valid records of one slot, the highest clock is the current one;
   older ones are stale (neither shown nor counted as rejected).

Rejections are counted by reason: ``malformed`` (not a record, or a payload of
the wrong shape), ``bad_signature``, ``unknown_author`` (not a member),
``not_authorized`` (a member writing where it may not), ``revoked``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from protocols.errors import DecodeError
from protocols.ledger_payloads import Member, check_payload, member_from_record, owner_of
from protocols.records import Record, federation_id_for, open_record

AUTHORITY_MAPS = ("members", "revoked")
NAMESPACE_MAPS = ("plan", "approvals", "progress", "secagg", "metrics", "left", "acks")
REASONS = ("malformed", "bad_signature", "unknown_author", "not_authorized", "revoked")

Entries = Mapping[str, Iterable[tuple[str, object]]]
Checks = Callable[[Callable[[Any], Any], list[Any]], Iterable[Any]]
"""``map``'s shape: how a batch of signature checks runs (``check_signatures``), and of
member records examined (``RecordCache.examine``)."""


@dataclass(frozen=True)
class LedgerView:
    """What a ledger says once every invalid record is set aside."""

    founder: str | None = None
    name: str | None = None
    genesis_key: str | None = None
    members: Mapping[str, Member] = field(default_factory=dict)
    admins: frozenset[str] = frozenset()
    revoked: Mapping[str, Record] = field(default_factory=dict)
    current: Mapping[str, Mapping[str, Record]] = field(default_factory=dict)
    rejections: Mapping[str, int] = field(default_factory=dict)
    max_clock: int = 0

    @property
    def rejected_count(self) -> int:
        return sum(self.rejections.values())


@dataclass(eq=False, slots=True)
class Entry:
    """A stored record and what is known about it regardless of the rest of the ledger."""

    record: Record
    payload_ok: bool
    member: Member | None
    signature: bool | None = None  # checked lazily, with its author's key
    digest: str | None = None  # federation_id_for(value), for members entries


class RecordCache:
    """Parsing, payload checks and signature checks, remembered per stored entry.

    All of them depend on the entry's bytes only (a node id fixes its verify key),
    so re-evaluating a ledger pays for the new entries only. Call ``sweep`` after
    a full evaluation to forget the entries it no longer saw.
    """

    def __init__(self, checks: Checks = map) -> None:
        """``checks`` maps a signature check over a batch of entries (``check_signatures``)."""
        self.checks = checks
        self._known: dict[tuple[str, str, bytes], Entry | None] = {}
        self._used: dict[tuple[str, str, bytes], Entry | None] = {}

    def entry(self, map_name: str, key: object, value: object) -> Entry | None:
        """The entry, or ``None`` when it is not a well-formed record."""
        if not isinstance(value, (bytes, bytearray)) or not isinstance(key, str):
            return None
        cache_key = (map_name, key, bytes(value))
        if cache_key in self._used:
            return self._used[cache_key]
        if cache_key in self._known:
            found = self._known[cache_key]
        else:
            found = _examine(map_name, key, cache_key[2])
        self._used[cache_key] = found
        return found

    def ahead(self, map_name: str, key: str, value: bytes) -> Entry | None:
        """The entry, examined ahead of its use (``Ledger.prepare``): one never looked up
        with ``entry`` is forgotten at the next sweep, as any entry not seen again."""
        cache_key = (map_name, key, value)
        if cache_key in self._used:
            return self._used[cache_key]
        if cache_key not in self._known:
            self._known[cache_key] = _examine(map_name, key, value)
        return self._known[cache_key]

    def examine(self, map_name: str, pairs: Iterable[tuple[str, object]]) -> None:
        """Examine in one batch (``checks``) the entries not known yet, for ``entry`` to find.

        For ``members``: deriving a member's box key checks its verify key's subgroup,
        nearly a signature check's cost, which libsodium pays without the GIL.
        """
        todo = []
        for key, value in pairs:
            if isinstance(key, str) and isinstance(value, (bytes, bytearray)):
                cache_key = (map_name, key, bytes(value))
                if cache_key not in self._used and cache_key not in self._known:
                    todo.append(cache_key)
        if len(todo) > 1:
            for cache_key, found in zip(todo, self.checks(_examine_key, todo), strict=True):
                self._known[cache_key] = found

    def sweep(self) -> None:
        """Keep only the entries looked up since the last sweep."""
        self._known, self._used = self._used, {}

    def forget(self, map_name: str, key: str, value: object) -> None:
        """An entry left the document: drop what was remembered about it."""
        if isinstance(value, (bytes, bytearray)):
            cache_key = (map_name, key, bytes(value))
            self._used.pop(cache_key, None)
            self._known.pop(cache_key, None)


def check_signatures(
    federation_id: str, entries: Iterable[Entry], keys: Mapping[str, bytes], checks: Checks = map
) -> None:
    """Check, in one batch, the signatures of the entries whose author has a key in ``keys``.

    The rules then find each verdict done (``Entry.signature``) instead of checking
    one signature at a time as they meet it. ``checks`` is ``map`` or a parallel
    map of the caller's (libsodium releases the GIL, so threads check signatures
    side by side). A key must be the one the rules would use for that author: a
    member's verify key is bound to its node id (rule 6), so any key of a
    well-formed member record is.
    """
    todo = [e for e in entries if e.signature is None and e.record.author in keys]
    if not todo:
        return
    pairs = [(e.record, keys[e.record.author]) for e in todo]
    for entry, good in zip(todo, checks(partial(_verifies, federation_id), pairs), strict=True):
        entry.signature = good


def _verifies(federation_id: str, pair: tuple[Record, bytes]) -> bool:
    record, verify_key = pair
    return record.verifies(federation_id, verify_key)


def _examine_key(cache_key: tuple[str, str, bytes]) -> Entry | None:
    return _examine(*cache_key)


def _examine(map_name: str, key: str, value: bytes) -> Entry | None:
    try:
        record = open_record(map_name, key, value)
    except DecodeError:
        return None
    if map_name != "members":
        return Entry(record, check_payload(record), None)
    member = member_from_record(record)  # the costly part: it derives the box key
    payload_ok = member is not None and member.genesis_name is None
    return Entry(record, payload_ok, member, digest=federation_id_for(value))


@dataclass(frozen=True)
class Authority:
    """Who is who, from ``members`` and ``revoked`` (rules 1 to 4 and 6)."""

    federation_id: str
    founder: str | None = None
    genesis: Entry | None = None
    keys: Mapping[str, bytes] = field(default_factory=dict)  # members not revoked
    roster: Mapping[str, Member] = field(default_factory=dict)  # revoked ones too
    admins: frozenset[str] = frozenset()
    revoked: frozenset[str] = frozenset()
    valid: tuple[Record, ...] = ()
    rejections: Mapping[str, int] = field(default_factory=dict)


class _Tally:
    def __init__(self, federation_id: str) -> None:
        self.fid = federation_id
        self.rejected: Counter[str] = Counter()
        self.valid: list[Record] = []
        self.keys: dict[str, bytes] = {}

    def accept_if(self, entry: Entry, authorized: bool) -> bool:
        reason = _judge(self.fid, self.keys.get(entry.record.author), entry, authorized)
        if reason is None:
            self.valid.append(entry.record)
            return True
        self.rejected[reason] += 1
        return False


def _judge(fid: str, verify_key: bytes | None, entry: Entry, authorized: bool) -> str | None:
    """Author's key, signature, payload shape, then authorization: the first miss."""
    if verify_key is None:
        return "unknown_author"
    if entry.signature is None:
        entry.signature = entry.record.verifies(fid, verify_key)
    if not entry.signature:
        return "bad_signature"
    if not entry.payload_ok:
        return "malformed"
    if not authorized:
        return "not_authorized"
    return None


def _find_genesis(federation_id: str, candidates: list[Entry]) -> Entry | None:
    for entry in candidates:
        record, member = entry.record, entry.member
        if (
            entry.digest == federation_id
            and member is not None
            and member.genesis_name is not None
            and record.author == record.slot
            and record.verifies("", member.verify_key)
        ):
            return entry
    return None


def latest(entries: Iterable[Entry]) -> dict[str, Entry]:
    """Per slot, the entry with the highest clock (rule 7)."""
    found: dict[str, Entry] = {}
    for entry in entries:
        known = found.get(entry.record.slot)
        if known is None or entry.record.clock > known.record.clock:
            found[entry.record.slot] = entry
    return found


def parse(
    map_name: str, pairs: Iterable[tuple[str, object]], cache: RecordCache, rejected: Counter[str]
) -> list[Entry]:
    parsed = []
    for key, value in pairs:
        entry = cache.entry(map_name, key, value)
        if entry is None:
            rejected["malformed"] += 1
        else:
            parsed.append(entry)
    return parsed


def authority(
    federation_id: str,
    members: list[Entry],
    revocations: list[Entry],
    malformed: int = 0,
) -> Authority:
    """Rules 1 to 4: genesis, founder, admins, revocations, the roster.

    ``malformed`` counts the entries of both maps that were not records at all.
    """
    tally = _Tally(federation_id)
    if malformed:
        tally.rejected["malformed"] += malformed
    genesis = _find_genesis(federation_id, members)
    if genesis is None or genesis.member is None:
        tally.rejected["unknown_author"] += len(members) + len(revocations)
        return Authority(federation_id, rejections=dict(tally.rejected))
    founder = genesis.record.author
    tally.keys[founder] = genesis.member.verify_key
    tally.valid.append(genesis.record)
    writes = [e for e in (*members, *revocations) if e is not genesis]

    # The founder's writes decide who the admins are (rules 2 and 3).
    by_founder = [e for e in writes if e.record.author == founder]
    founder_members = [
        e for e in by_founder if e.record.map_name == "members" and tally.accept_if(e, True)
    ]
    revoked = {
        e.record.slot
        for e in by_founder
        if e.record.map_name == "revoked" and tally.accept_if(e, e.record.slot != founder)
    }
    admins: set[str] = set()
    for slot, entry in latest([genesis, *founder_members]).items():
        assert entry.member is not None
        tally.keys[slot] = entry.member.verify_key
        if entry.member.admin and slot not in revoked and slot != founder:
            admins.add(slot)
    privileged = admins | {founder}

    # The admins' writes (rule 3).
    admin_members: list[Entry] = []
    for entry in writes:
        record = entry.record
        if record.author not in admins:
            continue
        ok = record.slot not in privileged
        if record.map_name == "members":
            ok = ok and entry.member is not None and not entry.member.admin
            if tally.accept_if(entry, ok):
                admin_members.append(entry)
        elif tally.accept_if(entry, ok):
            revoked.add(record.slot)

    roster: dict[str, Member] = {}
    for slot, entry in latest([genesis, *founder_members, *admin_members]).items():
        assert entry.member is not None  # accepted, so its payload was checked
        roster[slot] = entry.member.with_status(admin=slot in privileged, revoked=slot in revoked)
    tally.keys = {slot: m.verify_key for slot, m in roster.items()}

    # Nobody else writes members or revoked (rule 4 for the revoked).
    for entry in writes:
        if entry.record.author in privileged:
            continue
        if entry.record.author in revoked:
            tally.rejected["revoked"] += 1
        else:
            tally.accept_if(entry, False)

    return Authority(
        federation_id,
        founder=founder,
        genesis=genesis,
        keys={slot: key for slot, key in tally.keys.items() if slot not in revoked},
        roster=roster,
        admins=frozenset(admins),
        revoked=frozenset(revoked),
        valid=tuple(tally.valid),
        rejections=dict(tally.rejected),
    )


def verdict(auth: Authority, entry: Entry) -> str | None:
    """Why a record of a namespace map is rejected, or ``None`` if it is valid (rules 4, 5)."""
    record = entry.record
    if record.author in auth.revoked:
        return "revoked"
    owner = auth.founder if record.map_name == "plan" else owner_of(record.map_name, record.slot)
    verify_key = auth.keys.get(record.author)
    return _judge(auth.federation_id, verify_key, entry, record.author == owner)


def assemble(
    auth: Authority,
    current: Mapping[str, Mapping[str, Record]],
    rejections: Counter[str],
    max_clock: int,
) -> LedgerView:
    """A view from an authority and the namespace maps' current records."""
    authority_current: dict[str, dict[str, Record]] = {name: {} for name in AUTHORITY_MAPS}
    first_revocation: dict[str, Record] = {}
    for record in auth.valid:
        slots = authority_current[record.map_name]
        known = slots.get(record.slot)
        if known is None or record.clock > known.clock:
            slots[record.slot] = record
        if record.map_name == "revoked":
            first = first_revocation.get(record.slot)
            if first is None or (record.clock, record.author) < (first.clock, first.author):
                first_revocation[record.slot] = record
    genesis = auth.genesis
    return LedgerView(
        founder=auth.founder,
        name=None if genesis is None or genesis.member is None else genesis.member.genesis_name,
        genesis_key=None if genesis is None else genesis.record.key,
        members=auth.roster,
        admins=auth.admins,
        revoked={slot: first_revocation[slot] for slot in auth.revoked},
        current={**authority_current, **current},
        rejections=dict(Counter(auth.rejections) + rejections),
        max_clock=max(max((r.clock for r in auth.valid), default=0), max_clock),
    )
