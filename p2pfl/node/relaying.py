"""Relays in the daemon: who relays which link, serving as a relay, dialling through one.

A member whose ledger record has no address accepts no inbound connection
(``Member.reachable``). Where both ends of a topology edge are such members,
the reachable member ``topology.relays.assign_relays`` names relays it: every
node computes the same assignment from its ledger (the roster and addresses,
the plan's edges, the progress records), so the two ends and the relay agree
without a word. Both ends dial the relay (``p2pfl.node.links``) and ask for
each other; the relay's ``Splicer`` pipes them together and the ends run the
handshake and an encrypted session end to end (``p2pfl.transport.relay``).

A relay is *absent* when its progress record is more than ``ABSENT_LAG``
rounds behind the furthest member's: a relay that went down stops reporting
rounds while the others go on (their rounds close without the links it
carried, as with any dropout), and once it lags that far its links move to
the least-loaded present relay; only those links move, and they move back
when it catches up. Before training every record says 0: nobody is absent.
A member that signed its leave (``Ledger.left``) counts as absent from then
on, so its links move while it still serves them; a revoked one is no member.

The relay refuses (``allowed``) a peer that is not a member, a pair that is
not an edge of the topology, an edge with a reachable end (those dial each
other), and an edge its own view assigns to another relay; an end refused
because the relay's ledger lags behind its own retries with backoff, like any
link that could not be made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from protocols.ledger import Ledger
from protocols.ledger_payloads import Member
from topology.errors import NoRelay
from topology.relays import Edge, assign_relays, edge

log = logging.getLogger(__name__)

ABSENT_LAG = 2  # rounds behind the furthest member before a relay counts as absent
RELAY_WAIT = 30.0  # seconds an end waits at the relay for its peer before it dials again


def absent_members(progress: dict[str, int], roster: list[str]) -> set[str]:
    """Members more than ``ABSENT_LAG`` rounds behind the furthest (module docstring)."""
    furthest = max((progress.get(m, 0) for m in roster), default=0)
    return {m for m in roster if progress.get(m, 0) < furthest - ABSENT_LAG}


class Relaying:
    """The relay assignment as this node's ledger gives it, recomputed after each change.

    ``edges`` returns the topology's edges (``RoundDriver.edges``, the same object
    while they do not change); it is only called while some member is
    unreachable, so a federation of reachable sites never computes them. After a
    ledger change (``invalidate``) the next question compares the inputs (roster,
    reachability, absent members, edges) and recomputes only if one changed.
    """

    def __init__(
        self, me: str, ledger: Ledger, edges: Callable[[], Collection[tuple[str, str]]]
    ) -> None:
        self.me = me
        self._ledger = ledger
        self._edges = edges
        self._dirty = True
        self._inputs: tuple[object, ...] | None = None
        self._edges_seen: Collection[tuple[str, str]] | None = None
        self._assignment: dict[Edge, str] = {}
        self.error = ""  # why an edge has no relay (``NoRelay``), shown in the status

    def invalidate(self) -> None:
        """The ledger changed: the next question checks the inputs again."""
        self._dirty = True

    def assignment(self) -> dict[Edge, str]:
        if self._dirty:
            self._dirty = False
            self._refresh(self._ledger.members())
        return self._assignment

    def _refresh(self, members: dict[str, Member]) -> None:
        roster = sorted(members)
        reachable = frozenset(m for m, member in members.items() if member.reachable)
        if len(reachable) == len(roster):
            self._inputs, self._assignment, self.error = None, {}, ""
            return
        edges = self._edges()
        lagging = absent_members(self._ledger.progress(), roster)
        absent = frozenset(lagging | set(self._ledger.left()))
        inputs = (tuple(roster), reachable, absent)
        if inputs == self._inputs and edges is self._edges_seen:
            return
        self._inputs, self._edges_seen, self.error = inputs, edges, ""
        cut = [e for e in edges if e[0] in members and e[1] in members]
        try:
            self._assignment = assign_relays(roster, reachable, cut, absent)
        except NoRelay as exc:
            self._assignment, self.error = {}, str(exc)
            log.error("links without a relay: %s", exc)

    def relay_for(self, peer: str) -> str | None:
        """The member relaying our link to ``peer``, or None (not relayed, or nobody can)."""
        return self.assignment().get(edge(self.me, peer))

    def allowed(self, end: str, peer: str) -> tuple[str, str] | None:
        """The ``Splicer``'s rule: None to splice ``end`` to ``peer``, else (code, reason)."""
        members = self._ledger.members()
        if peer not in members or end not in members:
            return ("not-member", f"{peer if end in members else end} is not a member")
        if end == peer or self.me in (end, peer):
            return ("malformed", "a relay splices two other members")
        relay = self.assignment().get(edge(end, peer))
        if relay is None:
            return ("not-assigned", f"{end}-{peer} is no edge between two unreachable members")
        if relay != self.me:
            return ("not-assigned", f"{end}-{peer} is relayed by {relay}")
        return None

    def snapshot(self) -> dict[str, str]:
        """Each relayed edge of the federation, ``"a b"``, with its relay."""
        return {f"{a} {b}": relay for (a, b), relay in sorted(self.assignment().items())}
