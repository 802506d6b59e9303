"""Deterministic graph families, as edge arrays built with vectorised numpy.

Each function takes the node count (already checked to be at least 2) and
returns canonical undirected edges (``u < v``, see ``weights.canonical_edges``)
or, for the directed exponential graph, arcs ``(sender, receiver)``. Rules a
family imposes on ``n`` (a square for the torus, a power of two for the
hypercube) raise TopologyError naming ``nodes``.
"""

from __future__ import annotations

import math

import numpy as np

from topology.errors import TopologyError
from topology.weights import Edges, canonical_arcs, canonical_edges


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def ring(n: int) -> Edges:
    """Each node links to the next one around a cycle (n = 2 is a single edge)."""
    i = np.arange(n)
    return canonical_edges(n, np.stack([i, (i + 1) % n], axis=1))


def path(n: int) -> Edges:
    i = np.arange(n - 1)
    return canonical_edges(n, np.stack([i, i + 1], axis=1))


def star(n: int) -> Edges:
    """Node 0 is the hub: the shape of a parameter server, kept as the reference."""
    leaves = np.arange(1, n)
    return canonical_edges(n, np.stack([np.zeros_like(leaves), leaves], axis=1))


def complete(n: int) -> Edges:
    u, v = np.triu_indices(n, k=1)
    return np.stack([u, v], axis=1).astype(np.int64)


def torus(n: int) -> Edges:
    """An m x m grid with wrap-around, node ``r * m + c`` at row r, column c."""
    m = math.isqrt(n)
    if m * m != n:
        lo, hi = m * m, (m + 1) ** 2
        raise TopologyError(
            "nodes",
            f"a 2-D torus needs a square number of nodes (m x m); {n} is not (try {lo} or {hi})",
        )
    r, c = np.divmod(np.arange(n), m)
    right = r * m + (c + 1) % m
    down = ((r + 1) % m) * m + c
    i = np.arange(n)
    return canonical_edges(n, np.concatenate([np.stack([i, right], 1), np.stack([i, down], 1)]))


def _check_power_of_two(n: int, family: str) -> None:
    if not is_power_of_two(n):
        lo = 1 << (n.bit_length() - 1)
        raise TopologyError(
            "nodes",
            f"a {family} needs a power of two nodes; {n} is not (try {lo} or {lo * 2})",
        )


def hypercube(n: int) -> Edges:
    """Nodes are bit strings; two are linked when they differ in exactly one bit."""
    _check_power_of_two(n, "hypercube")
    i = np.arange(n)
    bits = [1 << b for b in range(n.bit_length() - 1)]
    pairs = np.concatenate([np.stack([i, i ^ bit], axis=1) for bit in bits])
    return canonical_edges(n, pairs)


def _hops(n: int) -> list[int]:
    """The powers of two below n: the jumps of the exponential graphs."""
    return [1 << k for k in range((n - 1).bit_length())]


def exponential(n: int) -> Edges:
    """Node i links to i + 2^k and i - 2^k (mod n) for every 2^k < n."""
    i = np.arange(n)
    pairs = np.concatenate([np.stack([i, (i + h) % n], axis=1) for h in _hops(n)])
    return canonical_edges(n, pairs)


def exponential_arcs(n: int) -> Edges:
    """Node i sends to i + 2^k (mod n) for every 2^k < n (Assran et al.'s push-sum graph)."""
    i = np.arange(n)
    pairs = np.concatenate([np.stack([i, (i + h) % n], axis=1) for h in _hops(n)])
    return canonical_arcs(n, pairs)


def check_one_peer(n: int) -> int:
    """The number of distinct steps (log2 n) of the one-peer exponential schedule."""
    _check_power_of_two(n, "one-peer exponential schedule")
    return n.bit_length() - 1


def one_peer_arcs(n: int, step: int) -> Edges:
    """At step t every node i sends to i + 2^(t mod log2 n)."""
    tau = check_one_peer(n)
    hop = 1 << (step % tau)
    i = np.arange(n)
    return canonical_arcs(n, np.stack([i, (i + hop) % n], axis=1))
