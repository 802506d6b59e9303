"""The federation ledger: one pycrdt ``Doc`` of signed records, and the views read from it.

The document has the top-level maps of DESIGN.md (``members``, ``revoked``,
``plan``, ``approvals``, ``progress``, ``secagg``, ``metrics``) and those of
membership over time (``left``: a member's signed leave; ``acks``: the round
each member first knew of each change of the roster, ``protocols.membership``).
Every value is a signed record (``protocols.records``) stored as msgpack bytes,
never as a pycrdt number (pycrdt hands integers back as floats). Anybody who can send a
Yjs update can put anything in the document; what counts is decided by the
readers (``protocols.ledger_rules``), so invalid records stay in the document,
out of every view, and are counted. The view is monotone
(``protocols.ledger_guard``): a record once verified is put back whenever an
update deletes or overwrites it, unless its own author superseded it, and the
update's origin is reported (``take_violations``).

Writes take the author's ``nacl.signing.SigningKey`` and a logical clock
(``next_clock()`` is one more than any valid record's, a Lamport clock); each
returns the Yjs update it made, for ``LedgerSync.local_update``. A write that
the rules would reject raises ``LocalProtocolError`` instead of being made.
A writer deletes its own older records of the slot it writes (never the
genesis record), so the document holds one live record per slot and author;
garbage collection stays on.

Views are brought up to date after every update applied and every write (and
lazily after anything else): only the entries an update touched are read back
(``protocols.ledger_doc``) and judged again (``protocols.ledger_state``), so a
progress update costs O(1) in the number of members, unless ``members`` or
``revoked`` changed, which changes who may write what and so re-judges
everything (signature checks stay cached).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Container, Iterable, Mapping
from typing import Any

import nacl.signing
from pycrdt import Doc, merge_updates

from protocols.errors import DecodeError, LocalProtocolError
from protocols.ledger_doc import MAPS, LedgerDoc
from protocols.ledger_guard import Violation, losses, restorable
from protocols.ledger_payloads import MAX_ACKS, Member, is_change_key
from protocols.ledger_rules import (
    NAMESPACE_MAPS,
    Checks,
    Entry,
    LedgerView,
    RecordCache,
    check_signatures,
    verdict,
)
from protocols.ledger_state import NamespaceState, evaluate
from protocols.records import (
    Record,
    box_key_for,
    canonical,
    federation_id_for,
    node_id_for,
    open_record,
    parse_round_slot,
    plan_hash,
    round_slot,
    seal,
    unpack,
)
from protocols.yjs_bounds import Limits


class Ledger:
    """One replica of a federation's ledger."""

    def __init__(
        self, federation_id: str, *, client_id: int | None = None, checks: Checks = map
    ) -> None:
        """An empty replica; ``client_id`` is the Yjs client id (``None``: pycrdt draws one).

        Two live replicas must never share a client id; pass distinct ids to make
        a simulation reproducible. ``checks`` runs a batch of signature checks
        when the whole view is judged again (``map``; a runtime may pass a parallel map).
        """
        self.federation_id = federation_id
        self.store = LedgerDoc(client_id=client_id)
        self._cache = RecordCache(checks)
        self._state: NamespaceState | None = None
        self._view: LedgerView | None = None
        self._origin: str | None = None
        self._repairs: list[bytes] = []
        self._violations: list[Violation] = []
        self._plan_hash: tuple[bytes, bytes] | None = None  # (the plan record's bytes, its hash)
        self._active: tuple[Mapping[str, Member], dict[str, Member]] | None = None  # members()
        self._versions: Counter[str] = Counter()  # per map: view refreshes that changed it

    @property
    def doc(self) -> Doc[Any]:
        """The pycrdt document (to inspect; write through this class)."""
        return self.store.doc

    # -- construction and encoding --------------------------------------------------

    @classmethod
    def found(
        cls,
        signing_key: nacl.signing.SigningKey,
        *,
        name: str,
        nonce: bytes,
        address: str = "",
        institution: str = "",
        clock: int = 1,
        client_id: int | None = None,
    ) -> Ledger:
        """Start a federation: sign the genesis record; its hash is the federation id.

        ``nonce`` (random bytes from the caller) tells apart two federations that
        one founder starts with the same name.
        """
        verify_key = bytes(signing_key.verify_key)
        payload = {
            "verify_key": verify_key,
            "box_key": box_key_for(verify_key),
            "address": address,
            "institution": institution,
            "admin": True,
            "federation": name,
            "nonce": bytes(nonce),
        }
        key, value = seal(signing_key, "", "members", node_id_for(verify_key), clock, payload)
        ledger = cls(federation_id_for(value), client_id=client_id)
        ledger.insert_raw("members", key, value)
        if ledger.founder is None:
            raise LocalProtocolError("the genesis record does not verify")
        return ledger

    @classmethod
    def from_updates(
        cls,
        federation_id: str,
        updates: Iterable[bytes],
        *,
        client_id: int | None = None,
        limits: Limits | None = None,
        checks: Checks = map,
    ) -> Ledger:
        """A replica rebuilt from Yjs updates (a file, an invitation's snapshot).

        ``limits`` bound each of these updates (``None``: the defaults, as for a
        peer's); a file of the whole ledger may need larger ones. ``checks``: as
        for the constructor.
        """
        ledger = cls(federation_id, client_id=client_id, checks=checks)
        try:
            for update in updates:
                ledger.store.apply_update(update, limits=limits)
        except DecodeError:
            ledger.store.close()
            raise
        return ledger

    def encode_state(self) -> bytes:
        """The whole document as one Yjs update."""
        return self.store.encode_state()

    def state_vector(self) -> bytes:
        return self.store.state_vector()

    @property
    def client_id(self) -> int:
        """The Yjs client id this replica's own writes carry."""
        return self.store.client_id

    def diff(self, state_vector: bytes) -> bytes:
        """What a replica at ``state_vector`` lacks, as one update; ``DecodeError`` if bad."""
        return self.store.diff(state_vector)

    def apply_update(self, update: bytes, *, origin: str | None = None) -> list[bytes]:
        """Merge a Yjs update from ``origin`` (a peer; ``None``: a file, a tool) and bring the
        view up to date; return the updates of what it changed (empty: nothing new).

        Verified records that the update deleted or overwrote are put back
        (``protocols.ledger_guard``); the updates returned then are one, the
        change and its repair merged, and ``take_violations`` names ``origin``.
        Raises ``DecodeError`` when the bytes are not a Yjs update.
        """
        return self._repaired(self.store.apply_update(update), origin)

    def prepare(self, updates: Iterable[bytes]) -> None:
        """Check ahead, as one batch (``checks``: on the free cores, in a node), the
        signatures of the records ``updates`` carry, so that applying them one at a time
        finds each check done (``LedgerSync.prepare``: a burst of updates in hand).

        A signature check is half of what applying a progress update costs. Nothing is
        applied and the view is as it was; a record of an author who is not a member
        in the current view is checked in its turn. Before the first view, nothing
        is done: the first view judges everything in one batch anyway.
        """
        if self._state is None:
            return
        found: dict[int, Entry] = {}
        for update in updates:
            for map_name, key, value in self.store.values_in(update):
                if map_name in NAMESPACE_MAPS:
                    entry = self._cache.ahead(map_name, key, value)
                    if entry is not None:
                        found[id(entry)] = entry  # once, however many copies came
        self._check(found.values())

    def _check(self, entries: Iterable[Entry]) -> None:
        """The signatures of ``entries`` whose authors are members, checked in one batch."""
        assert self._state is not None
        keys = self._state.auth.keys
        check_signatures(self.federation_id, entries, keys, self._cache.checks)

    def version(self, *maps: str) -> tuple[int, ...]:
        """A number per map that changes whenever the map's part of the view may have
        changed (and stays put otherwise): what a caller keys a cache of its reading on."""
        self.view()
        return tuple(self._versions[name] for name in maps)

    def take_violations(self) -> list[Violation]:
        """The verified records deleted or overwritten since the last call (and put back)."""
        found, self._violations = self._violations, []
        return found

    def entries(self, map_name: str) -> dict[str, object]:
        """A map's stored entries as they are, valid or not (for tools and tests)."""
        self.view()
        return dict(self.store.entries(map_name))

    def insert_raw(self, map_name: str, key: str, value: bytes) -> bytes:
        """Store bytes under ``key`` as they are, unchecked (tests, tools, forged input).

        As with a peer's update, a verified record it overwrites is put back at once
        (the update returned then holds both), and ``take_violations`` tells.
        """
        self.view()
        made = self.store.transact(map_name, {key: bytes(value)}, ())
        out = self._repaired([made] if made else [], None)
        return out[0] if out else b""

    def _repaired(self, changes: list[bytes], origin: str | None) -> list[bytes]:
        """Bring the view up to date after ``changes`` from ``origin``; merge in any repair."""
        self._origin = origin
        try:
            self.view()
        finally:
            self._origin = None
        repairs, self._repairs = self._repairs, []
        if not repairs:
            return changes
        return [bytes(merge_updates(*changes, *repairs))]

    # -- views ------------------------------------------------------------------------

    def view(self) -> LedgerView:
        """The validated view, brought up to date with the entries changed since the last one."""
        if self._view is None or self.store.stale:
            changed = self.store.refresh()
            if self._state is not None:
                self._guard(changed)
            state = self._state
            if state is None or changed.get("members") or changed.get("revoked"):
                pairs = {name: self.store.entries(name).items() for name in MAPS}
                state = self._state = NamespaceState.rebuild(self.federation_id, pairs, self._cache)
                self._versions.update(MAPS)  # who may write what changed: every map's view
            else:
                self._versions.update(name for name, keys in changed.items() if keys)
                if sum(len(keys) for keys in changed.values()) > 1:  # a sync's reply, a file
                    self._check_changed(changed)
                for name, keys in changed.items():  # namespace maps only, here
                    entries = self.store.entries(name)
                    for key in keys:
                        state.put(name, key, entries.get(key))
            self._view = state.view()
        return self._view

    def _check_changed(self, changed: dict[str, set[str]]) -> None:
        """The signatures of the changed entries, checked in one batch before they are judged."""
        entry = self._cache.entry
        found = []
        for name, keys in changed.items():
            stored = self.store.entries(name)
            for key in keys:
                value = stored.get(key)
                if value is not None and (known := entry(name, key, value)) is not None:
                    found.append(known)
        if len(found) > 1:  # a write is one record and the deletion of the one it replaces
            self._check(found)

    def _guard(self, changed: dict[str, set[str]]) -> None:
        """Put back the verified records that the changes lost to anyone but their author,
        and take those keys out of ``changed`` (their entries are as they were); put back
        the valid records that arrived already deleted (``protocols.ledger_guard``)."""
        state = self._state
        assert state is not None
        puts, violations = losses(state, self.store.entries, changed, self._cache, self._origin)
        self._violations += violations
        arrived, self.store.arrived = self.store.arrived, []
        restored = restorable(state, self.store.entries, arrived, self._cache)
        if puts or restored:
            for name in {*puts, *restored}:
                entries = {**restored.get(name, {}), **puts.get(name, {})}
                self._repairs.append(self.store.transact(name, entries, ()))
            for name, keys in self.store.refresh().items():
                changed[name] |= keys
            for name, entries in puts.items():
                changed[name] -= entries.keys()

    @property
    def founder(self) -> str | None:
        return self.view().founder

    @property
    def name(self) -> str | None:
        return self.view().name

    def members(self, *, include_revoked: bool = False) -> dict[str, Member]:
        """Valid members by node id (with ``include_revoked``, revoked ones too).

        A copy of a dictionary kept per roster (the view's ``members``, a new mapping
        whenever ``members`` or ``revoked`` change): a node asks at every ledger change,
        and filtering 10,000 members took 0.53 ms where the copy takes 0.05.
        """
        roster = self.view().members
        if include_revoked:
            return dict(roster)
        active = self._active
        if active is None or active[0] is not roster:
            active = self._active = (roster, {n: m for n, m in roster.items() if not m.revoked})
        return dict(active[1])

    def member(self, node_id: str) -> Member | None:
        """A valid member, by node id (``None``: none, or revoked)."""
        member = self.view().members.get(node_id)
        return None if member is None or member.revoked else member

    def revoked(self) -> dict[str, Record]:
        """Revoked node ids, each with the first valid revocation record."""
        return dict(self.view().revoked)

    def box_key(self, node_id: str) -> bytes | None:
        """A valid member's X25519 public key (for secure aggregation)."""
        member = self.member(node_id)
        return None if member is None else member.box_key

    def verify_key(self, node_id: str) -> bytes | None:
        member = self.member(node_id)
        return None if member is None else member.verify_key

    def plan(self) -> dict[str, Any] | None:
        record = self._plan_record()
        return None if record is None else copy.deepcopy(record.payload["plan"])

    def plan_hash(self) -> bytes | None:
        """The current plan's hash; computed once per plan record (a round asks several times)."""
        record = self._plan_record()
        if record is None:
            return None
        if self._plan_hash is None or self._plan_hash[0] != record.value:
            self._plan_hash = (record.value, plan_hash(record.payload["plan"]))
        return self._plan_hash[1]

    def _plan_record(self) -> Record | None:
        return self.view().current["plan"].get("plan")

    def approvals(self) -> dict[str, bytes]:
        """Each valid member's latest approval: node id -> the plan hash it signed."""
        return {n: r.payload["plan_hash"] for n, r in self._current("approvals").items()}

    def approvers(self) -> set[str]:
        """Valid members who approved the current plan."""
        current = self.plan_hash()
        return {n for n, h in self.approvals().items() if current is not None and h == current}

    def progress(self) -> dict[str, int]:
        """Each valid member's last completed round: rounds are numbered from 1, so this is
        also how many it completed (a member with no record has completed none)."""
        return {n: r.payload["round"] for n, r in self._current("progress").items()}

    def round_of(self, node_id: str) -> int:
        """``progress()[node_id]`` (0: no record) without copying every member's: O(1)."""
        record = self.view().current["progress"].get(node_id)
        return 0 if record is None else int(record.payload["round"])

    def anyone_progressed(self, *, besides: str = "") -> bool:
        """Whether a valid member but ``besides`` completed a round (stops at the first)."""
        slots = self.view().current["progress"]
        return any(r.payload["round"] > 0 for n, r in slots.items() if n != besides)

    def progress_digests(self) -> dict[str, tuple[int, bytes]]:
        """Each valid member's last completed round and the digest of its model after it,
        where its progress record carries one (a newcomer checks its start model so)."""
        found = {}
        for n, r in self._current("progress").items():
            digest = r.payload.get("digest")
            if isinstance(digest, bytes):
                found[n] = (r.payload["round"], digest)
        return found

    def secagg(self, round_: int) -> dict[str, frozenset[str]]:
        """Per receiver, the dropout set it declared for ``round_``."""
        return {
            slot.partition("/")[2]: frozenset(r.payload["dropped"])
            for slot, r in self._current("secagg").items()
            if slot.startswith(f"{round_}/")
        }

    def metrics(self, round_: int) -> dict[str, dict[str, int | float]]:
        """Per node, the metrics it published for ``round_``."""
        return {
            slot.partition("/")[2]: dict(r.payload["values"])
            for slot, r in self._current("metrics").items()
            if slot.startswith(f"{round_}/")
        }

    def metrics_by_round(
        self, skip: Container[int] = ()
    ) -> dict[int, dict[str, dict[str, int | float]]]:
        """Per round not in ``skip``, per node, the metrics it published: ``metrics`` of
        every round in one pass over the map (a reader following a long run)."""
        out: dict[int, dict[str, dict[str, int | float]]] = {}
        for slot, record in self.view().current["metrics"].items():
            parsed = parse_round_slot(slot)  # valid records have a round slot
            if parsed is not None and parsed[0] not in skip:
                out.setdefault(parsed[0], {})[parsed[1]] = dict(record.payload["values"])
        return out

    def left(self) -> dict[str, int]:
        """Each valid member's signed leave: node id -> the round it leaves after."""
        return {n: r.payload["round"] for n, r in self._current("left").items()}

    def acks(self) -> dict[str, dict[str, int]]:
        """Each valid member's acknowledgements: node id -> change key -> the round it was
        in when it first knew of the change (``protocols.membership.ledger_timeline``)."""
        return {n: dict(r.payload["changes"]) for n, r in self._current("acks").items()}

    def _current(self, map_name: str) -> dict[str, Record]:
        return dict(self.view().current[map_name])

    @property
    def rejected_count(self) -> int:
        return self.view().rejected_count

    def rejections(self) -> dict[str, int]:
        """Rejected records by reason (see ``protocols.ledger_rules``)."""
        return dict(self.view().rejections)

    def next_clock(self) -> int:
        """A logical clock above every valid record's (Lamport)."""
        return self.view().max_clock + 1

    # -- writes -----------------------------------------------------------------------

    def _write(
        self,
        signing_key: nacl.signing.SigningKey,
        map_name: str,
        slot: str,
        clock: int,
        payload: object,
    ) -> bytes:
        author = node_id_for(bytes(signing_key.verify_key))
        key, value = seal(signing_key, self.federation_id, map_name, slot, clock, payload)
        self.view()  # brings the copy of the maps up to date
        if self.store.entries(map_name).get(key) == value:
            return b""
        stale = [k for k, c in self._own_keys(map_name, slot, author) if c < clock]
        if not self._would_be_current(map_name, slot, key, value, stale):
            raise LocalProtocolError(
                f"{author} may not write {map_name}[{slot!r}] at clock {clock} "
                f"(not allowed, or not above the slot's current clock)"
            )
        update = self.store.transact(map_name, {key: value}, stale)
        self.view()  # the record is verified now, and so kept from then on
        return update

    def _would_be_current(
        self, map_name: str, slot: str, key: str, value: bytes, stale: list[str]
    ) -> bool:
        """Whether writing ``value`` (and deleting ``stale``) would make it the slot's record."""
        self.view()
        state = self._state
        assert state is not None  # view() built it
        if map_name in NAMESPACE_MAPS:
            entry = self._cache.entry(map_name, key, value)
            if entry is None or verdict(state.auth, entry) is not None:
                return False
            others = state.valid_in_slot(map_name, slot)
            clock = entry.record.clock
            return all(r.clock < clock for k, r in others.items() if k not in stale)
        entries = {name: list(self.store.entries(name).items()) for name in MAPS}
        entries[map_name] = [(k, v) for k, v in entries[map_name] if k not in stale]
        entries[map_name].append((key, value))
        record = evaluate(self.federation_id, entries, self._cache).current[map_name].get(slot)
        return record is not None and record.value == value

    def _own_keys(self, map_name: str, slot: str, author: str) -> list[tuple[str, int]]:
        """Keys and clocks of ``author``'s records in ``slot`` (to prune), bar genesis."""
        genesis = self.view().genesis_key
        keys = []
        entries = self.store.entries(map_name)
        for key in self.store.keys_in_slot(map_name, slot):
            value = entries[key]
            if map_name == "members" and key == genesis:
                continue
            try:
                record = open_record(map_name, key, value)
            except DecodeError:
                continue
            if record.author == author:
                keys.append((key, record.clock))
        return keys

    def admit(
        self,
        signing_key: nacl.signing.SigningKey,
        verify_key: bytes,
        *,
        clock: int,
        address: str = "",
        institution: str = "",
        admin: bool = False,
    ) -> bytes:
        """Sign a member record for the holder of ``verify_key`` (founder or admin only)."""
        payload = {
            "verify_key": bytes(verify_key),
            "box_key": box_key_for(verify_key),
            "address": address,
            "institution": institution,
            "admin": admin,
        }
        return self._write(signing_key, "members", node_id_for(verify_key), clock, payload)

    def revoke(
        self, signing_key: nacl.signing.SigningKey, node_id: str, *, clock: int, reason: str = ""
    ) -> bytes:
        return self._write(signing_key, "revoked", node_id, clock, {"reason": reason})

    def set_plan(
        self, signing_key: nacl.signing.SigningKey, plan: Mapping[str, object], *, clock: int
    ) -> bytes:
        """Publish the training plan (founder only); check it encodes first."""
        plan = unpack(canonical(plan))
        return self._write(signing_key, "plan", "plan", clock, {"plan": plan})

    def approve(
        self, signing_key: nacl.signing.SigningKey, plan_hash_: bytes, *, clock: int
    ) -> bytes:
        author = node_id_for(bytes(signing_key.verify_key))
        return self._write(signing_key, "approvals", author, clock, {"plan_hash": plan_hash_})

    def report_progress(
        self,
        signing_key: nacl.signing.SigningKey,
        round_: int,
        *,
        clock: int,
        digest: bytes | None = None,
    ) -> bytes:
        author = node_id_for(bytes(signing_key.verify_key))
        payload: dict[str, object] = {"round": round_}
        if digest is not None:
            payload["digest"] = bytes(digest)
        return self._write(signing_key, "progress", author, clock, payload)

    def leave(self, signing_key: nacl.signing.SigningKey, round_: int, *, clock: int) -> bytes:
        """Sign this member's leave: it takes part up to round ``round_`` and no further.

        A leave is final: ``LocalProtocolError`` for a second one that names another
        round (the same round again changes nothing and returns ``b""``), for a
        negative round, or for a node that is not a member.
        """
        if type(round_) is not int or round_ < 0:
            raise LocalProtocolError(f"a leave names a round >= 0, not {round_!r}")
        author = node_id_for(bytes(signing_key.verify_key))
        if self.member(author) is None:
            raise LocalProtocolError(f"{author} is not a member; it has nothing to leave")
        known = self.left().get(author)
        if known == round_:
            return b""
        if known is not None:
            raise LocalProtocolError(f"{author} already leaves after round {known}")
        return self._write(signing_key, "left", author, clock, {"round": round_})

    def ack(
        self, signing_key: nacl.signing.SigningKey, changes: Mapping[str, int], *, clock: int
    ) -> bytes | None:
        """Acknowledge changes of the roster: change key -> the round this member was in
        when it first knew of the change; ``None`` when that adds nothing.

        Merged with the member's earlier acknowledgements, keeping the earliest round
        of each change (a member first knew of a change once). ``LocalProtocolError``
        for a key that is not ``protocols.membership.change_key`` of a node id, a
        negative round, or more than ``MAX_ACKS`` changes in all.
        """
        author = node_id_for(bytes(signing_key.verify_key))
        known = self.acks().get(author, {})
        merged = dict(known)
        for key, round_ in changes.items():
            if not is_change_key(key):
                raise LocalProtocolError(f"{key!r} is not a change key of a node id")
            if type(round_) is not int or round_ < 0:
                raise LocalProtocolError(f"{key}: an acknowledgement names a round >= 0")
            merged[key] = min(round_, merged.get(key, round_))
        if merged == known:
            return None
        if len(merged) > MAX_ACKS:
            raise LocalProtocolError(f"{author} would acknowledge over {MAX_ACKS} changes")
        return self._write(signing_key, "acks", author, clock, {"changes": merged})

    def declare_dropouts(
        self,
        signing_key: nacl.signing.SigningKey,
        round_: int,
        dropped: Iterable[str],
        *,
        clock: int,
    ) -> bytes:
        author = node_id_for(bytes(signing_key.verify_key))
        slot = round_slot(round_, author)
        return self._write(signing_key, "secagg", slot, clock, {"dropped": sorted(set(dropped))})

    def publish_metrics(
        self,
        signing_key: nacl.signing.SigningKey,
        round_: int,
        values: Mapping[str, int | float],
        *,
        clock: int,
    ) -> bytes:
        author = node_id_for(bytes(signing_key.verify_key))
        slot = round_slot(round_, author)
        return self._write(signing_key, "metrics", slot, clock, {"values": dict(values)})
