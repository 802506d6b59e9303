"""The shape of each map's payloads, and whose namespace each slot is.

==========  ======================  =================================================
map         slot                    payload
==========  ======================  =================================================
members     node id                 verify_key, box_key (32 bytes each), address
                                    (empty: the member accepts no inbound link),
                                    institution (str), admin (bool); the genesis
                                    record adds federation (its name) and nonce
revoked     node id                 reason (str)
plan        ``"plan"``              plan (a map with string keys)
approvals   node id                 plan_hash (32 bytes)
progress    node id                 round (int >= 0: the last completed, numbered from
                                    1), optional digest (<= 64 bytes)
secagg      ``"{round}/{node}"``    dropped (sorted list of distinct node ids)
metrics     ``"{round}/{node}"``    values (map of str to int or float)
left        node id                 round (int >= 0: the round the member leaves after)
acks        node id                 changes (map of change key, ``"join:<node>"``,
                                    ``"leave:<node>"`` or ``"revoke:<node>"``, to the
                                    int >= 0 round its author was in when it first
                                    knew of the change; at most ``MAX_ACKS`` keys)
==========  ======================  =================================================

Unknown payload fields make a record malformed: a reader that does not know a
field cannot tell whether it matters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from protocols.errors import DecodeError, MembershipError
from protocols.membership import parse_change
from protocols.records import (
    KEY_SIZE,
    Record,
    box_key_for,
    is_node_id,
    node_id_for,
    parse_round_slot,
)

MAX_TEXT = 1024
MAX_ACKS = 1024
"""Changes of the roster one member's ``acks`` record names: every join, leave and
revocation of a federation's life that it acknowledged (about 40 bytes each)."""
_MEMBER_FIELDS = frozenset({"verify_key", "box_key", "address", "institution", "admin"})
_GENESIS_FIELDS = _MEMBER_FIELDS | {"federation", "nonce"}


@dataclass(frozen=True)
class Member:
    """A member as the ledger knows it; ``inviter`` is who signed the current record."""

    node_id: str
    verify_key: bytes
    box_key: bytes
    address: str
    institution: str
    inviter: str
    clock: int
    admin: bool = False
    revoked: bool = False
    genesis_name: str | None = None

    @property
    def reachable(self) -> bool:
        """Whether members can dial this one: a record without an address says it listens nowhere.

        A site behind a firewall that accepts no inbound connection is admitted with an
        empty address; it dials out to all its links, and where both ends of an edge are
        unreachable a reachable member relays the link (``topology.relays``).
        """
        return bool(self.address)

    def with_status(self, *, admin: bool, revoked: bool) -> Member:
        if (admin, revoked) == (self.admin, self.revoked):
            return self
        return dataclasses.replace(self, admin=admin, revoked=revoked)


def _text(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_TEXT


def _key(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == KEY_SIZE


def member_from_record(record: Record) -> Member | None:
    """The member a ``members`` record describes, or ``None`` if it is malformed."""
    p = record.payload
    if not isinstance(p, dict) or set(p) not in (_MEMBER_FIELDS, _GENESIS_FIELDS):
        return None
    if not (_key(p["verify_key"]) and _key(p["box_key"]) and type(p["admin"]) is bool):
        return None
    if not (_text(p["address"]) and _text(p["institution"])):
        return None
    genesis = "federation" in p
    if genesis and not (_text(p["federation"]) and isinstance(p["nonce"], bytes)):
        return None
    try:
        bound = node_id_for(p["verify_key"]) == record.slot
        bound = bound and box_key_for(p["verify_key"]) == p["box_key"]
    except DecodeError:
        return None
    if not bound:
        return None
    return Member(
        node_id=record.slot,
        verify_key=p["verify_key"],
        box_key=p["box_key"],
        address=p["address"],
        institution=p["institution"],
        inviter=record.author,
        clock=record.clock,
        admin=p["admin"],
        genesis_name=p["federation"] if genesis else None,
    )


def _number(value: object) -> bool:
    return type(value) in (int, float)


def _check_revoked(p: dict[str, Any]) -> bool:
    return set(p) == {"reason"} and _text(p["reason"])


def _check_plan(p: dict[str, Any]) -> bool:
    return set(p) == {"plan"} and isinstance(p["plan"], dict)


def _check_approval(p: dict[str, Any]) -> bool:
    return set(p) == {"plan_hash"} and _key(p["plan_hash"])


def _check_progress(p: dict[str, Any]) -> bool:
    if set(p) - {"round", "digest"} or "round" not in p:
        return False
    if type(p["round"]) is not int or p["round"] < 0:
        return False
    return "digest" not in p or (isinstance(p["digest"], bytes) and len(p["digest"]) <= 64)


def _check_secagg(p: dict[str, Any]) -> bool:
    dropped = p.get("dropped")
    return (
        set(p) == {"dropped"}
        and isinstance(dropped, list)
        and all(is_node_id(n) for n in dropped)
        and dropped == sorted(set(dropped))
    )


def _check_metrics(p: dict[str, Any]) -> bool:
    values = p.get("values")
    return (
        set(p) == {"values"}
        and isinstance(values, dict)
        and all(_text(k) and _number(v) for k, v in values.items())
    )


def _check_left(p: dict[str, Any]) -> bool:
    return set(p) == {"round"} and _round(p["round"])


def _check_acks(p: dict[str, Any]) -> bool:
    changes = p.get("changes")
    if set(p) != {"changes"} or not isinstance(changes, dict) or len(changes) > MAX_ACKS:
        return False
    return all(is_change_key(k) and _round(v) for k, v in changes.items())


def _round(value: object) -> bool:
    return type(value) is int and value >= 0


def is_change_key(key: object) -> bool:
    """A change key naming a node id (``protocols.membership.parse_change``)."""
    try:
        return is_node_id(parse_change(key)[1])
    except MembershipError:
        return False


_CHECKS = {
    "revoked": _check_revoked,
    "plan": _check_plan,
    "approvals": _check_approval,
    "progress": _check_progress,
    "secagg": _check_secagg,
    "metrics": _check_metrics,
    "left": _check_left,
    "acks": _check_acks,
}


def slot_fits(map_name: str, slot: str) -> bool:
    if map_name == "plan":
        return slot == "plan"
    if map_name in ("secagg", "metrics"):
        return parse_round_slot(slot) is not None
    return is_node_id(slot)


def check_payload(record: Record) -> bool:
    """Whether a (non-genesis) record's slot and payload have the shape its map expects."""
    if not slot_fits(record.map_name, record.slot):
        return False
    if record.map_name == "members":
        member = member_from_record(record)
        return member is not None and member.genesis_name is None
    return isinstance(record.payload, dict) and _CHECKS[record.map_name](record.payload)


def owner_of(map_name: str, slot: str) -> str | None:
    """The node whose own namespace ``slot`` is, for the maps that have one."""
    if map_name in ("approvals", "progress", "left", "acks"):
        return slot
    if map_name in ("secagg", "metrics"):
        parsed = parse_round_slot(slot)
        return None if parsed is None else parsed[1]
    return None
