"""Which reachable member relays each edge between two members that accept no connection.

A member whose ledger record has no address accepts no inbound connection: it
dials out. On an edge where both ends are such members neither can dial the
other, so a reachable member splices them: both ends dial it and it pipes
their (end-to-end encrypted) bytes. Every node computes the same assignment
from the same facts (the roster, who is reachable, the topology's edges, who
is absent), so the two ends of an edge and the relay agree without asking
anyone. The rules:

- only edges whose two ends are both unreachable are relayed; a relay is a
  reachable member that is not absent;
- the load is spread: edges are taken in the order of a hash of the edge
  (not of the ids' order, which would hand the first relay the first ids'
  edges), and dealt round-robin over the reachable members in the order of a
  hash of their ids: loads differ by at most one, so with two or more
  candidates and two or more relayed edges no candidate carries them all;
- an absent relay is replaced without moving anything else: the assignment is
  first made over every reachable member, then only the edges of absent
  relays are handed, in the same order, each to the least-loaded present
  member (ties: the member's hash order); a member that comes back gets its
  edges back;
- an edge that needs a relay when no reachable member is present raises
  ``NoRelay``, naming the edge.

Pure: the standard library only; the hash is SHA-256, so the assignment is
the same on every machine and Python version. The cost is one hash per edge
and per reachable member, and a heap operation per replaced edge.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Collection, Iterable, Sequence

from topology.errors import NoRelay, TopologyError

Edge = tuple[str, str]
"""An undirected edge as a pair of node ids, the smaller first."""


def edge(a: str, b: str) -> Edge:
    """The edge between ``a`` and ``b`` in its one spelling (the smaller id first)."""
    if a == b:
        raise TopologyError("edges", f"{a!r} cannot be linked to itself")
    return (a, b) if a < b else (b, a)


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\0".join(parts).encode()).digest()


def relayed_edges(
    members: Sequence[str], reachable: Collection[str], edges: Iterable[tuple[str, str]]
) -> list[Edge]:
    """The edges of ``edges`` whose two ends are unreachable, in assignment order."""
    known = set(members)
    if len(known) != len(members):
        raise TopologyError("members", "a member is listed twice")
    strangers = set(reachable) - known
    if strangers:
        raise TopologyError("reachable", f"not members: {sorted(strangers)}")
    pairs = set()
    for a, b in edges:
        if a not in known or b not in known:
            raise TopologyError("edges", f"edge {a}-{b} names a node that is not a member")
        pairs.add(edge(a, b))
    cut = [e for e in pairs if e[0] not in reachable and e[1] not in reachable]
    return sorted(cut, key=lambda e: (_digest(*e), e))


def assign_relays(
    members: Sequence[str],
    reachable: Collection[str],
    edges: Iterable[tuple[str, str]],
    absent: Collection[str] = (),
) -> dict[Edge, str]:
    """For each edge between two unreachable members, the member that relays it (module docstring).

    ``members`` is the roster, ``reachable`` those of them that accept inbound
    connections, ``edges`` the topology's links (either spelling, repeats allowed),
    ``absent`` members not to rely on now. Raises ``NoRelay`` when an edge needs a
    relay and no reachable member is present, ``TopologyError`` for inconsistent input.
    """
    order = relayed_edges(members, reachable, edges)
    everyone = sorted(set(reachable), key=lambda m: (_digest(m), m))
    gone = set(absent)
    present = [m for m in everyone if m not in gone]
    if order and not present:
        a, b = order[0]
        raise NoRelay(
            "relays",
            f"{a} and {b} both accept no inbound connection and no reachable member "
            f"{'is present' if everyone else 'exists'} to relay their link "
            f"({len(order)} such edge(s)): make a member reachable, or change the topology",
        )
    chosen = {e: everyone[i % len(everyone)] for i, e in enumerate(order)}
    if gone & set(chosen.values()):
        rank = {m: i for i, m in enumerate(everyone)}
        load = dict.fromkeys(present, 0)
        for relay in chosen.values():
            if relay in load:
                load[relay] += 1
        heap = [(n, rank[m], m) for m, n in load.items()]
        heapq.heapify(heap)
        for e in order:
            if chosen[e] in gone:
                n, r, relay = heapq.heappop(heap)
                chosen[e] = relay
                heapq.heappush(heap, (n + 1, r, relay))
    return chosen
