"""``Topology``: who talks to whom at each gossip step, and with which weights.

A topology is a function ``step -> W`` (a sparse mixing matrix) plus the
facts the runtime branches on (``directed``, ``time_varying``, ``period``).
Everything else (the networkx graph, the neighbour lists) is read off ``W``,
so the graph, the neighbours and the weights can never disagree.

The matrices are computed once per distinct step and cached: a static graph
holds one matrix, a periodic schedule its ``period`` matrices, and the
never-repeating random schedule only its last few steps (a simulation asks for
the same step many times, then moves on). The cached arrays are marked
read-only, so handing them out without a copy cannot corrupt the cache.
networkx is imported only when a graph object is asked for: a simulation that
only needs ``mixing`` never pays for it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from topology.errors import TopologyError
from topology.weights import is_doubly_stochastic

if TYPE_CHECKING:
    import networkx as nx

APERIODIC: int = 2**62
"""The ``period`` of a schedule that never repeats: ``step % period == step`` for
any step a run will reach, so code that reduces steps modulo the period keeps working.
Never iterate over ``range(period)``; test ``period == APERIODIC`` instead."""

RECENT_STEPS = 16
"""How many steps of a never-repeating schedule stay cached."""

MatrixAt = Callable[[int], sp.csr_array]


def freeze(w: sp.csr_array) -> sp.csr_array:
    """Mark a CSR matrix's buffers read-only (in place) and return it."""
    for buf in (w.data, w.indices, w.indptr):
        buf.flags.writeable = False
    return w


class _Step:
    """One step's matrix and what is derived from it, computed on first use."""

    __slots__ = ("_graph", "_transposed", "directed", "w")

    def __init__(self, w: sp.csr_array, directed: bool) -> None:
        self.w = freeze(w)
        self.directed = directed
        self._transposed: sp.csr_array | None = None
        self._graph: nx.Graph | None = None

    @property
    def transposed(self) -> sp.csr_array:
        if self._transposed is None:
            t = sp.csr_array(self.w.T)
            t.sort_indices()
            self._transposed = freeze(t)
        return self._transposed

    @property
    def graph(self) -> nx.Graph:
        if self._graph is None:
            import networkx as nx

            self._graph = nx.freeze(graph_of(self.w, self.directed))
        return self._graph


def graph_of(w: sp.csr_array, directed: bool) -> nx.Graph:
    """The communication graph of a mixing matrix; edges carry their ``weight``.

    Undirected: edge ``{i, j}`` where ``W[i, j] > 0``. Directed: arc ``j -> i``
    (``j`` sends to ``i``) where ``W[i, j] > 0``.
    """
    import networkx as nx

    coo = w.tocoo()
    off = coo.row != coo.col
    rows, cols, vals = coo.row[off], coo.col[off], coo.data[off]
    g: nx.Graph = nx.DiGraph() if directed else nx.Graph()
    g.add_nodes_from(range(w.shape[0]))
    if directed:
        g.add_weighted_edges_from(zip(cols.tolist(), rows.tolist(), vals.tolist(), strict=True))
    else:
        upper = rows < cols
        g.add_weighted_edges_from(
            zip(rows[upper].tolist(), cols[upper].tolist(), vals[upper].tolist(), strict=True)
        )
    return g


@dataclass(frozen=True, eq=False)
class Topology:
    """A named communication graph or schedule of graphs with its mixing weights.

    ``period`` is how many distinct matrices the schedule cycles through: 1 for
    a static graph, ``APERIODIC`` for a schedule that draws a fresh graph every
    step (seeded by ``(seed, step)``, so any step can be recomputed alone).
    ``weights`` names the rule actually used: one of the undirected rules,
    ``push-sum`` for directed graphs, or ``schedule`` where the family fixes
    its own weights. ``doubly_stochastic`` says whether every matrix also
    has unit row sums, so plain D-PSGD averaging (not only push-sum) keeps
    the mean: true of every undirected topology, and of the directed ones
    here too (each node has as many in- as out-neighbours).
    """

    kind: str
    n: int
    directed: bool
    time_varying: bool
    period: int
    weights: str
    params: Mapping[str, Any]
    doubly_stochastic: bool
    _matrix_at: MatrixAt = field(repr=False)
    _cache: OrderedDict[int, _Step] = field(default_factory=OrderedDict, repr=False)

    @classmethod
    def create(
        cls,
        kind: str,
        n: int,
        matrix_at: MatrixAt,
        *,
        period: int = 1,
        directed: bool = False,
        weights: str,
        params: Mapping[str, Any],
        doubly_stochastic: bool = True,
    ) -> Topology:
        """A topology from ``step -> W``; ``doubly_stochastic`` is the family's promise."""
        if not 1 <= period <= APERIODIC:
            raise ValueError(f"period must be in 1..APERIODIC, not {period}")
        return cls(
            kind=kind,
            n=n,
            directed=directed,
            time_varying=period != 1,
            period=period,
            weights=weights,
            params=MappingProxyType(dict(params)),
            doubly_stochastic=doubly_stochastic,
            _matrix_at=matrix_at,
        )

    @classmethod
    def static(
        cls,
        kind: str,
        w: sp.csr_array,
        *,
        directed: bool = False,
        weights: str,
        params: Mapping[str, Any],
    ) -> Topology:
        """A topology whose single matrix is already built (and checked here)."""
        topo = cls.create(
            kind,
            w.shape[0],
            lambda _step: w,
            directed=directed,
            weights=weights,
            params=params,
            doubly_stochastic=is_doubly_stochastic(w),
        )
        topo._cache[0] = _Step(w, directed)
        return topo

    def _step(self, step: int) -> _Step:
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
            raise TopologyError("step", f"must be a non-negative integer, not {step!r}")
        key = int(step) % self.period
        entry = self._cache.get(key)
        if entry is None:
            entry = _Step(self._matrix_at(key), self.directed)
            self._cache[key] = entry
            if self.period == APERIODIC and len(self._cache) > RECENT_STEPS:
                self._cache.popitem(last=False)
        elif self.period == APERIODIC:
            self._cache.move_to_end(key)
        return entry

    def mixing(self, step: int = 0) -> sp.csr_array:
        """``W`` at ``step`` (float64, n x n, read-only): ``x_next = W @ x``."""
        return self._step(step).w

    def graph(self, step: int = 0) -> nx.Graph:
        """The (frozen) networkx graph at ``step``; a ``DiGraph`` when directed."""
        return self._step(step).graph

    def _node(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, int | np.integer) or not 0 <= i < self.n:
            raise TopologyError("node", f"must be an integer in 0..{self.n - 1}, not {i!r}")
        return int(i)

    def in_neighbours(self, i: int, step: int = 0) -> tuple[int, ...]:
        """The nodes whose models node ``i`` mixes in at ``step`` (sorted, without ``i``)."""
        return _row(self._step(step).w, self._node(i))

    def out_neighbours(self, i: int, step: int = 0) -> tuple[int, ...]:
        """The nodes that mix in node ``i``'s model at ``step`` (sorted, without ``i``)."""
        entry = self._step(step)
        return _row(entry.transposed if self.directed else entry.w, self._node(i))


def _row(w: sp.csr_array, i: int) -> tuple[int, ...]:
    cols = w.indices[w.indptr[i] : w.indptr[i + 1]]
    return tuple(int(j) for j in cols if j != i)
