"""Who a node mixes with, round by round: the run spec's topology over a roster of names.

The roster is a list of node names; a node's index in the topology is its
position. A simulation's roster is ``n0 .. n{N-1}``; a daemon's is the
federation's members sorted by node id (every member computes the same one).
``Graph.build`` validates the spec for the roster's size at every step
(``RunSpec.check``), so a graph that exists can be run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import topology
from p2pfl.errors import ConfigError
from p2pfl.spec.run import RunSpec
from protocols.gossip import Neighbourhood

HoodOf = Callable[[str, int], Neighbourhood]
"""(node, round) -> that node's neighbourhood in that round."""

CACHE_LIMIT = 4096


@dataclass(frozen=True)
class Graph:
    """The roster's topology: neighbourhoods per round, and the links a node needs."""

    roster: tuple[str, ...]
    topo: topology.Topology
    steps: range  # the distinct steps of the schedule the run reaches (``RunSpec.steps``)
    _index: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    _hoods: dict[tuple[str, int], Neighbourhood] = field(
        default_factory=dict, compare=False, repr=False
    )
    _links: dict[str, frozenset[str]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, spec: RunSpec, roster: tuple[str, ...] | list[str]) -> Graph:
        roster = tuple(roster)
        if len(set(roster)) != len(roster):
            raise ConfigError("the roster names a node twice")
        topo = spec.check(len(roster), list(roster))
        graph = cls(roster, topo, spec.steps(topo))
        graph._index.update({name: i for i, name in enumerate(roster)})
        return graph

    @property
    def n(self) -> int:
        return len(self.roster)

    def index(self, node: str) -> int:
        try:
            return self._index[node]
        except KeyError:
            raise ConfigError(f"node {node} is not in the roster") from None

    def neighbourhood(self, node: str, round: int) -> Neighbourhood:
        """``node``'s row and column of the round's mixing matrix (cached per step of the schedule).

        Rounds a period apart share one matrix, so a static topology reads each
        node's row once per run, not once per round.
        """
        key = (node, round % self.topo.period if round >= 0 else round)  # < 0: _read refuses it
        hood = self._hoods.get(key)
        if hood is None:
            if len(self._hoods) >= CACHE_LIMIT:
                self._hoods.clear()
            hood = self._hoods[key] = self._read(self.index(node), round)
        return hood

    def _read(self, i: int, round: int) -> Neighbourhood:
        w = self.topo.mixing(round)
        row = w[[i], :].tocoo()
        col = w[:, [i]].tocoo()
        names = self.roster
        in_weights = {names[j]: float(v) for j, v in zip(row.col, row.data, strict=True) if j != i}
        out = {names[j]: float(v) for j, v in zip(col.row, col.data, strict=True) if j != i}
        return Neighbourhood(float(w[i, i]), in_weights, out)

    def hood_fn(self, node: str) -> Callable[[int], Neighbourhood]:
        """The function round -> neighbourhood of one node, as gossip cores take it."""
        self.index(node)

        def at(round: int) -> Neighbourhood:
            return self.neighbourhood(node, round)

        return at

    def links_of(self, node: str) -> set[str]:
        """Everyone ``node`` exchanges with in some round the run reaches."""
        if node not in self._links:
            peers: set[str] = set()
            for step in self.steps:
                hood = self.neighbourhood(node, step)
                peers |= set(hood.in_weights) | set(hood.out_shares)
            self._links[node] = frozenset(peers)
        return set(self._links[node])

    def edges(self) -> set[tuple[str, str]]:
        """Every pair that exchanges in some round the run reaches, as (smaller, larger) names:
        ``links_of`` of every node at once, read from each step's matrix in one pass (at
        10,000 members, a row and a column read per node took seconds)."""
        names = self.roster
        found: set[tuple[str, str]] = set()
        for step in self.steps:
            w = self.topo.mixing(step).tocoo()
            for i, j in zip(w.row.tolist(), w.col.tolist(), strict=True):
                if i != j:
                    a, b = names[i], names[j]
                    found.add((a, b) if a < b else (b, a))
        return found
