"""Distances on the communication graph: connectivity and diameter, fast at 10^4 nodes.

Graphs arrive as sparse adjacency matrices with ``A[i, j] = 1`` when ``j``
talks to ``i`` (the pattern of the mixing matrices, without the diagonal), so
directed and undirected graphs share one representation. The diameter is the
expensive figure (all-pairs BFS is O(n m)); three tactics keep it cheap:
a single BFS when every node looks the same (vertex-transitive families,
circulant patterns), the Takes-Kosters bounding algorithm for undirected
graphs, and a bit-parallel BFS, 64 sources per machine word, for what remains.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, shortest_path

_BFS_BATCH = 512
_BOUNDED_RUNS = 24


def union_adjacency(mats: list[sp.csr_array]) -> sp.csr_array:
    """Who ever talks to whom over the given steps: ``A[i, j] = 1`` when ``j -> i``, no loops."""
    n = mats[0].shape[0]
    coos = [w.tocoo() for w in mats]
    rows = np.concatenate([c.row for c in coos]).astype(np.int64)
    cols = np.concatenate([c.col for c in coos]).astype(np.int64)
    keys = np.unique(rows[rows != cols] * n + cols[rows != cols])
    return sp.csr_array((np.ones(len(keys)), (keys // n, keys % n)), shape=(n, n))


def is_connected(adj: sp.csr_array, directed: bool) -> bool:
    """Connected (strongly, when directed)."""
    count, _ = connected_components(adj, directed=directed, connection="strong")
    return int(count) == 1


def diameter(adj: sp.csr_array, directed: bool, *, transitive: bool = False) -> int | None:
    """Longest shortest path (in hops) of the union graph; None if not (strongly) connected.

    ``transitive`` promises that every node has the same eccentricity (the
    family says so, or the pattern is circulant): one BFS then suffices.
    Otherwise undirected graphs use the bounding algorithm and directed ones a
    bit-parallel BFS from every node.
    """
    if not is_connected(adj, directed):
        return None
    if transitive or _circulant_pattern(adj):
        return int(shortest_path(adj, directed=True, unweighted=True, indices=[0]).max())
    if not directed:
        return _bounded_diameter(adj)
    return _max_eccentricity(adj, np.arange(adj.shape[0]))


def _bounded_diameter(adj: sp.csr_array) -> int:
    """Diameter of a connected undirected graph from few BFS runs (Takes & Kosters 2011).

    Each BFS from v bounds every node's eccentricity: ``max(d, e - d) <= ecc(w)
    <= e + d`` with ``d = dist(v, w)`` and ``e = ecc(v)``. Nodes that can no
    longer move the bounds on the diameter drop out; the next BFS starts
    alternately from the node with the largest upper and the smallest lower
    bound. Expanders and other near-transitive graphs prune badly, so after
    ``_BOUNDED_RUNS`` runs the remaining candidates are finished by a
    bit-parallel BFS (their eccentricities are then small or few).
    """
    n = adj.shape[0]
    if adj.nnz == n * (n - 1):
        return 1
    lower = np.zeros(n)
    upper = np.full(n, np.inf)
    active = np.ones(n, dtype=bool)
    low, high = 0.0, math.inf
    v = int(np.argmax(np.diff(adj.indptr)))
    for run in range(_BOUNDED_RUNS):
        d = shortest_path(adj, directed=True, unweighted=True, indices=[v])[0]
        e = float(d.max())
        lower = np.maximum(lower, np.maximum(d, e - d))
        upper = np.minimum(upper, e + d)
        low = max(low, e)
        active[v] = False
        active &= ~(((upper <= low) & (2 * lower >= high)) | (lower == upper))
        if not active.any():
            return int(low)
        high = min(high, 2 * e, max(low, float(upper[active].max())))
        if low >= high:
            return int(low)
        candidates = np.flatnonzero(active)
        key = upper[candidates] if run % 2 == 0 else -lower[candidates]
        v = int(candidates[np.argmax(key)])
    return max(int(low), _max_eccentricity(adj, np.flatnonzero(active)))


def _max_eccentricity(adj: sp.csr_array, sources: npt.NDArray[np.intp]) -> int:
    """The largest eccentricity among ``sources``, by BFS from 64 sources per machine word.

    Row ``i`` of ``adj`` lists who ``i`` hears from, so one BFS level is, for
    every node, the OR of its in-neighbours' frontier bits: one gather and one
    ``bitwise_or.reduceat`` over the CSR arrays for ``_BFS_BATCH`` sources at once.
    """
    n = adj.shape[0]
    indptr, indices = adj.indptr, adj.indices
    has_in = np.diff(indptr) > 0
    starts = indptr[:-1][has_in]
    best = 0
    for begin in range(0, len(sources), _BFS_BATCH):
        batch = sources[begin : begin + _BFS_BATCH]
        words = (len(batch) + 63) // 64
        slot = np.arange(len(batch))
        frontier = np.zeros((n, words), dtype=np.uint64)
        frontier[batch, slot // 64] |= np.left_shift(np.uint64(1), (slot % 64).astype(np.uint64))
        seen = frontier.copy()
        level = 0
        while True:
            reached = np.zeros_like(frontier)
            reached[has_in] = np.bitwise_or.reduceat(frontier[indices], starts, axis=0)
            reached &= ~seen
            if not reached.any():
                break
            level += 1
            seen |= reached
            frontier = reached
        best = max(best, level)
    return best


def _circulant_pattern(adj: sp.csr_array) -> bool:
    n = adj.shape[0]
    coo = adj.tocoo()
    offsets = np.unique((coo.col - coo.row) % n)
    return bool(adj.nnz == n * len(offsets))
