"""A daemon's epochs: the roster of each round, from the ledger, alike on every node.

The rule is ``protocols.membership.ledger_timeline``, the one the rehearsal
follows: a change of the roster (a signed leave, a revocation) takes effect at
its boundary, one past the latest round in which a member of the epoch first
knew of it. ``Membership`` is the node's side of it:

- on every ledger change it acknowledges, once, each change it has not
  acknowledged yet, with the round it is in (``acknowledge``: an ``acks``
  record flooded like any other);
- before it begins a round past one of its acknowledgements it waits, bounded
  by ``[limits] epoch_timeout``, until the change's boundary is known
  (``waiting``): so no member begins the boundary round without knowing it;
- it tells the round driver the epoch each round runs in (``epoch_at``) and
  the first round whose epoch is not known yet (``horizon``), whose frames the
  exchange holds back until it is.

The epoch-0 roster is the run's (every valid member when training started);
a change of somebody outside it changes nothing, but for a join: a valid member
that approved the plan and is no member of the run is joining
(``joiners``), and the members acknowledge its join as any other change. A
joining node itself learns the run's roster from those acknowledgements
(``joining_roster``) and takes part from its boundary on
(``p2pfl.node.joining``).

A revoked member's records leave the ledger's view, its acknowledgements with
them; the epochs they fixed must not move. ``Membership`` therefore remembers
every acknowledgement it has seen (the earliest round of each) and computes
from what it remembers: a change resolved before a revocation keeps its
boundary. A node restarted after a revocation has only the ledger's view (see
docs/membership.md)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from protocols.membership import Epoch, Kind, Timeline, change_key, ledger_timeline

if TYPE_CHECKING:
    from p2pfl.node.host import RoundHost
    from protocols.ledger import Ledger

log = logging.getLogger(__name__)
_ROSTER_MAPS = ("members", "revoked", "plan", "approvals", "left")
"""The ledger maps that joiners, the order and the changes are read from."""
Reading = tuple[frozenset[str], tuple[str, ...], dict[str, str]]
"""``(joiners, order, changes)`` as read from the ledger (``Membership._read``)."""


class Membership:
    """One node's view of the epochs of its run (module docstring)."""

    def __init__(self, node: RoundHost, roster: tuple[str, ...]) -> None:
        self.node = node
        self.me = node.node_id
        self.roster = tuple(sorted(roster))
        self.epoch = 0  # the number of the epoch the node's core runs
        self._line: Timeline | None = None
        self._pending: list[str] = []
        self._facts: object = None
        self._acks: dict[str, dict[str, int]] = {}  # every acknowledgement seen, kept
        self._read_at: tuple[tuple[int, ...], Reading] | None = None  # (ledger versions, it)

    def acks(self) -> dict[str, dict[str, int]]:
        """The acknowledgements the ledger holds, and those of members revoked since."""
        for author, theirs in self.node.ledger.acks().items():
            kept = self._acks.setdefault(author, {})
            for key, round_ in theirs.items():
                kept[key] = min(round_, kept.get(key, round_))
        return {author: dict(theirs) for author, theirs in self._acks.items()}

    def joiners(self) -> set[str]:
        """Valid members that approved the plan and are no members of the run's roster."""
        return set(self._read()[0])

    def _read(self) -> Reading:
        """``(joiners, order, changes)``, read again only when the maps they come from
        changed (``Ledger.version``): a node asks at every ledger change, most of them
        progress records, and each reading is O(members)."""
        ledger = self.node.ledger
        facts = ledger.version(*_ROSTER_MAPS)
        if self._read_at is None or self._read_at[0] != facts:
            joiners = frozenset(ledger.approvers() - set(self.roster) - set(ledger.revoked()))
            order = tuple(sorted(set(self.roster) | joiners))
            inside = set(order)
            keys = {change_key(Kind.JOIN, m): m for m in joiners}
            keys.update({change_key(Kind.LEAVE, m): m for m in ledger.left() if m in inside})
            keys.update({change_key(Kind.REVOKE, m): m for m in ledger.revoked() if m in inside})
            self._read_at = (facts, (joiners, order, keys))
        return self._read_at[1]

    def joining_soon(self, round: int) -> set[str]:
        """Joiners whose first round is not known yet or is at most two rounds away."""
        joiners = self.joiners()
        if not joiners:
            return set()  # every round of every run asks: no timeline for nothing
        line, _ = self.refresh()
        soon = set()
        for joiner in joiners:
            first = line.first_round(joiner)
            if first is None or first >= round - 1:
                soon.add(joiner)
        return soon

    def order(self) -> tuple[str, ...]:
        """Every member the epochs may hold, sorted by node id (the graphs' order)."""
        return self._read()[1]

    def changes(self) -> dict[str, str]:
        """The roster's changes the ledger holds: change key -> its subject."""
        return dict(self._read()[2])

    def refresh(self) -> tuple[Timeline, list[str]]:
        """The timeline and the pending change keys the ledger implies now (cached)."""
        ledger = self.node.ledger
        order = self.order()
        left = {m: r for m, r in ledger.left().items() if m in set(order)}
        revoked = sorted(m for m in ledger.revoked() if m in set(order))
        acks = self.acks()
        facts = (order, left, revoked, acks)
        if self._line is None or facts != self._facts:
            self._line, self._pending = ledger_timeline(order, order, left, revoked, acks)
            self._facts = facts
        return self._line, self._pending

    def acknowledge(self, round: int) -> None:
        """Acknowledge, with ``round``, every change this node has not acknowledged yet."""
        ledger = self.node.ledger
        if self.me in ledger.revoked():
            return  # its records count no more
        mine = ledger.acks().get(self.me, {})
        changes = self.changes()
        new = {k: round for k, subject in changes.items() if k not in mine and subject != self.me}
        if not new:
            return
        update = ledger.ack(self.node.identity.signing_key, new, clock=ledger.next_clock())
        if update:
            log.info("acknowledged %s in round %d", ", ".join(sorted(new)), round)
            self.node.record("acknowledged", round=round, changes=sorted(new))
            self.node.write_ledger(update)

    def waiting(self, round: int) -> list[str]:
        """The pending changes this node must know the boundary of before round ``round``."""
        _, pending = self.refresh()
        mine = self.acks().get(self.me, {})
        return [k for k in pending if k in mine and mine[k] < round]

    def horizon(self) -> int | None:
        """The first round whose epoch may still change (None: every round's is known).

        A pending change's boundary is one past the latest acknowledgement of it, so
        never before one past the latest known so far.
        """
        _, pending = self.refresh()
        ledger = self.node.ledger
        acks, left = self.acks(), ledger.left()
        earliest: list[int] = []
        for key in pending:
            known = [theirs[key] for theirs in acks.values() if key in theirs]
            subject = key.partition(":")[2]
            if key == change_key(Kind.LEAVE, subject) and subject in left:
                known.append(left[subject])
            if known:
                earliest.append(1 + max(known))
        return min(earliest, default=None)

    def epoch_at(self, round: int) -> tuple[Epoch, Timeline]:
        line, _ = self.refresh()
        return line.epoch_at(round), line


def joining_roster(ledger: Ledger, me: str) -> tuple[str, ...] | None:
    """The run's roster as a joining node learns it: once a member acknowledged its join,
    the epoch-0 members the ledger implies; ``None`` before."""
    key = change_key(Kind.JOIN, me)
    acks = ledger.acks()
    if not any(key in theirs for theirs in acks.values()):
        return None
    revoked = set(ledger.revoked())
    order = tuple(sorted(set(ledger.members(include_revoked=True))))
    approved = ledger.approvers() | revoked
    line, _ = ledger_timeline(order, approved, ledger.left(), sorted(revoked), acks)
    return tuple(sorted(line.epochs[0].members))
