"""Mixing weights: from a graph's edges to the matrix ``W`` of one gossip step.

Convention (the one the whole project relies on): ``x_next = W @ x`` and
``W[i, j]`` is the weight node ``i`` gives to node ``j``'s model, so row ``i``
holds what ``i`` receives and column ``j`` what ``j`` sends.

Undirected graphs get a symmetric, doubly stochastic ``W`` with a positive
diagonal (a lazy chain has no eigenvalue -1, so bipartite graphs still mix):

- ``metropolis``  ``W_ij = 1 / (1 + max(d_i, d_j))``: needs only the two end
  degrees, so each node computes its weights from its neighbours' degrees.
- ``max-degree``  ``W_ij = 1 / (1 + d_max)`` on every edge: one global constant.
- ``uniform``     ``W_ij = 1 / (1 + d_i)``: each node splits evenly over itself
  and its neighbours; doubly stochastic only on regular graphs, so it is
  refused elsewhere rather than silently breaking the average.

Directed graphs (push-sum) get a column-stochastic ``W``: each node keeps one
share and sends one share to each out-neighbour, ``1 / (1 + out_degree)``.

Matrices are built with vectorised numpy from edge arrays, never with Python
loops over edges, because a 10,000-node graph must be weighted in milliseconds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from topology.catalog import WEIGHT_RULES
from topology.errors import TopologyError

Edges = npt.NDArray[np.int64]
"""An ``(m, 2)`` integer array; undirected edges are stored once with ``u < v``."""

STOCHASTIC_TOL = 1e-12


def canonical_edges(n: int, pairs: npt.ArrayLike) -> Edges:
    """Undirected edges as ``(m, 2)``, ``u < v``, sorted, unique, without self-loops."""
    arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    u = np.minimum(arr[:, 0], arr[:, 1])
    v = np.maximum(arr[:, 0], arr[:, 1])
    keep = u != v
    keys = np.unique(u[keep] * n + v[keep])
    return np.stack([keys // n, keys % n], axis=1)


def canonical_arcs(n: int, pairs: npt.ArrayLike) -> Edges:
    """Directed arcs ``(source, target)`` as ``(m, 2)``, sorted, unique, without self-loops."""
    arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    keep = arr[:, 0] != arr[:, 1]
    keys = np.unique(arr[keep, 0] * n + arr[keep, 1])
    return np.stack([keys // n, keys % n], axis=1)


def from_entries(n: int, rows: Any, cols: Any, data: Any) -> sp.csr_array:
    """A float64 CSR matrix with duplicates summed, exact zeros dropped, indices sorted."""
    w = sp.coo_array(
        (np.asarray(data, dtype=np.float64), (np.asarray(rows), np.asarray(cols))),
        shape=(n, n),
    ).tocsr()
    w.sum_duplicates()
    w.eliminate_zeros()
    w.sort_indices()
    return w


def degrees(n: int, edges: Edges) -> npt.NDArray[np.int64]:
    """Degree of every node of an undirected edge array."""
    return np.bincount(edges[:, 0], minlength=n) + np.bincount(edges[:, 1], minlength=n)


def symmetric_weights(n: int, edges: Edges, rule: str = "metropolis") -> sp.csr_array:
    """The symmetric, doubly stochastic mixing matrix of an undirected graph.

    Raises TopologyError for an unknown rule, or for ``uniform`` on a graph
    whose nodes do not all have the same degree.
    """
    deg = degrees(n, edges)
    u, v = edges[:, 0], edges[:, 1]
    if rule == "metropolis":
        w = 1.0 / (1.0 + np.maximum(deg[u], deg[v]))
    elif rule == "max-degree":
        w = np.full(len(edges), 1.0 / (1.0 + float(deg.max(initial=0))))
    elif rule == "uniform":
        if n and deg.min() != deg.max():
            raise TopologyError(
                "weights",
                f"uniform weights are doubly stochastic only on regular graphs; this one has "
                f"degrees {int(deg.min())}..{int(deg.max())} (use metropolis or max-degree)",
            )
        w = 1.0 / (1.0 + deg[u].astype(np.float64))
    else:
        raise TopologyError("weights", f"must be one of {', '.join(WEIGHT_RULES)}, not {rule!r}")
    given = np.bincount(u, w, minlength=n) + np.bincount(v, w, minlength=n)
    diag = np.arange(n)
    return from_entries(
        n,
        np.concatenate([u, v, diag]),
        np.concatenate([v, u, diag]),
        np.concatenate([w, w, 1.0 - given]),
    )


def push_sum_weights(n: int, arcs: Edges) -> sp.csr_array:
    """The column-stochastic matrix of a directed graph: a node splits its mass evenly.

    Arc ``(s, t)`` means ``s`` sends to ``t``, so it fills ``W[t, s]``.
    """
    out_degree = np.bincount(arcs[:, 0], minlength=n)
    share = 1.0 / (1.0 + out_degree.astype(np.float64))
    diag = np.arange(n)
    return from_entries(
        n,
        np.concatenate([arcs[:, 1], diag]),
        np.concatenate([arcs[:, 0], diag]),
        np.concatenate([share[arcs[:, 0]], share]),
    )


def clique_entries(
    groups: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """COO entries that average each row of ``groups`` (a ``(g, f)`` array) exactly.

    Every member of a group of ``f`` nodes gives ``1/f`` to each member, itself
    included: one step of a complete graph per group, the building block of
    finite-time schedules.
    """
    g, f = groups.shape
    rows = np.repeat(groups, f, axis=1).ravel()
    cols = np.tile(groups, (1, f)).ravel()
    return rows, cols, np.full(g * f * f, 1.0 / f)


def is_doubly_stochastic(w: sp.csr_array, tol: float = STOCHASTIC_TOL) -> bool:
    """Rows and columns all sum to one within ``tol`` and no entry is negative."""
    if w.nnz and float(w.data.min()) < -tol:
        return False
    ones = np.ones(w.shape[0])
    return bool(
        np.abs(w @ ones - 1.0).max(initial=0.0) <= tol
        and np.abs(w.T @ ones - 1.0).max(initial=0.0) <= tol
    )


def is_column_stochastic(w: sp.csr_array, tol: float = STOCHASTIC_TOL) -> bool:
    """Columns all sum to one within ``tol`` and no entry is negative (push-sum's need)."""
    if w.nnz and float(w.data.min()) < -tol:
        return False
    return bool(np.abs(w.T @ np.ones(w.shape[0]) - 1.0).max(initial=0.0) <= tol)


def is_symmetric(w: sp.csr_array, tol: float = STOCHASTIC_TOL) -> bool:
    diff = abs(w - w.T)
    return bool(diff.nnz == 0 or float(diff.max()) <= tol)
