"""Random graph families, reproducible from an integer seed.

Randomness comes only from ``numpy.random.Generator`` objects (or integer seeds
derived from one for networkx generators), never from global state, so a seed
names one graph on every machine.

Random d-regular graphs are the one family that must be fast at scale (the
benchmark builds 10,000 nodes of degree 8 in milliseconds), so they use a
vectorised configuration model: shuffle the ``n * d`` half-edges ("stubs"),
pair them up, and re-pair only the stubs of self-loops and repeated edges
together with a few random good pairs until the graph is simple. Each repair
round keeps degrees exact; in sparse graphs one or two rounds suffice. The
result is close to, though not exactly, uniform over d-regular graphs. Dense
requests (d > (n - 1) / 2) are answered with the complement of a sparse one.
The other families use networkx's generators, imported when first used.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from topology.errors import TopologyError
from topology.weights import Edges, canonical_edges

if TYPE_CHECKING:
    import networkx as nx

DRAWS = 100
"""How many graphs a family conditioned on connectivity draws before giving up."""

_REPAIR_ROUNDS = 200


def components(n: int, edges: Edges) -> int:
    """The number of connected components of an undirected edge array."""
    from scipy.sparse.csgraph import connected_components  # 55 ms to import: when a draw needs it

    adj = sp.coo_array((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    count, _ = connected_components(adj, directed=False)
    return int(count)


def check_regular(n: int, d: int, *, family: str = "regular") -> None:
    """The rules any d-regular graph on n nodes must satisfy."""
    if d < 1:
        raise TopologyError("degree", f"must be at least 1 for a {family} graph, not {d}")
    if d >= n:
        raise TopologyError("degree", f"must be less than the number of nodes ({n}), not {d}")
    if (n * d) % 2:
        raise TopologyError(
            "degree",
            f"nodes x degree must be even for a d-regular graph (each edge has two ends); "
            f"{n} x {d} is odd",
        )


def _pairing(n: int, d: int, rng: np.random.Generator) -> Edges | None:
    """One configuration-model draw with repair, or None if it got stuck."""
    stubs = np.repeat(np.arange(n, dtype=np.int64), d)
    rng.shuffle(stubs)
    pairs = stubs.reshape(-1, 2)
    m = len(pairs)
    for _ in range(_REPAIR_ROUNDS):
        u = np.minimum(pairs[:, 0], pairs[:, 1])
        v = np.maximum(pairs[:, 0], pairs[:, 1])
        keys = u * n + v
        order = np.argsort(keys, kind="stable")
        repeated = np.zeros(m, dtype=bool)
        repeated[order[1:]] = keys[order[1:]] == keys[order[:-1]]
        broken = (u == v) | repeated
        bad = np.flatnonzero(broken)
        if len(bad) == 0:
            return np.stack([u, v], axis=1)
        good = np.flatnonzero(~broken)
        extra = rng.choice(good, size=min(len(good), max(len(bad), 2)), replace=False)
        chosen = np.concatenate([bad, extra])
        loose = pairs[chosen].ravel()
        rng.shuffle(loose)
        pairs[chosen] = loose.reshape(-1, 2)
    return None


def _sparse_regular(n: int, d: int, rng: np.random.Generator) -> Edges:
    if d == 0:
        return np.zeros((0, 2), dtype=np.int64)
    for _ in range(DRAWS):
        edges = _pairing(n, d, rng)
        if edges is not None:
            return canonical_edges(n, edges)
    raise TopologyError("degree", f"could not draw a simple {d}-regular graph on {n} nodes")


def _complement(n: int, edges: Edges) -> Edges:
    u, v = np.triu_indices(n, k=1)
    taken = np.zeros(n * n, dtype=bool)
    taken[edges[:, 0] * n + edges[:, 1]] = True
    keep = ~taken[u * n + v]
    return np.stack([u[keep], v[keep]], axis=1).astype(np.int64)


def regular_edges(n: int, d: int, rng: np.random.Generator) -> Edges:
    """One random simple d-regular graph (possibly disconnected); rules already checked."""
    if d > (n - 1) / 2:
        return _complement(n, _sparse_regular(n, n - 1 - d, rng))
    return _sparse_regular(n, d, rng)


def connected_regular(n: int, d: int, seed: int) -> Edges:
    """A random d-regular graph conditioned on being connected."""
    check_regular(n, d)
    if d < 3 and d != n - 1:
        raise TopologyError(
            "degree",
            f"must be at least 3 for a connected random regular graph on {n} nodes "
            f"(1- and 2-regular graphs split into pieces), not {d}",
        )
    rng = np.random.default_rng(seed)
    for _ in range(DRAWS):
        edges = regular_edges(n, d, rng)
        if components(n, edges) == 1:
            return edges
    raise TopologyError(
        "degree", f"{DRAWS} random {d}-regular graphs on {n} nodes were disconnected"
    )


def _edges_of(g: nx.Graph) -> Edges:
    return canonical_edges(g.number_of_nodes(), np.asarray(list(g.edges()), dtype=np.int64))


def _child_seeds(seed: int) -> npt.NDArray[np.int64]:
    return np.random.default_rng(seed).integers(0, 2**31 - 1, size=DRAWS)


def check_probability(p: float, name: str = "p") -> None:
    if not 0.0 < p <= 1.0:
        raise TopologyError(name, f"must be a probability in (0, 1], not {p}")


def erdos_renyi(n: int, p: float, seed: int) -> Edges:
    """G(n, p) conditioned on connectivity: redraw until connected."""
    import networkx as nx

    check_probability(p)
    for child in _child_seeds(seed):
        edges = _edges_of(nx.fast_gnp_random_graph(n, p, seed=int(child)))
        if components(n, edges) == 1:
            return edges
    threshold = math.log(n) / n
    raise TopologyError(
        "p",
        f"G({n}, {p}) was disconnected in {DRAWS} draws; p should be well above "
        f"ln(n)/n = {threshold:.3g}",
    )


def default_erdos_renyi_p(n: int) -> float:
    """Twice the connectivity threshold ln(n)/n: connected with high probability."""
    return min(1.0, 2.0 * math.log(n) / n)


def watts_strogatz(n: int, degree: int, p: float, seed: int) -> Edges:
    """A ring lattice of even ``degree`` with each edge rewired with probability p, connected."""
    if degree < 2 or degree % 2:
        raise TopologyError(
            "degree",
            f"must be even and at least 2 for watts-strogatz (degree/2 neighbours on each "
            f"side of the ring), not {degree}",
        )
    if degree >= n:
        raise TopologyError("degree", f"must be less than the number of nodes ({n}), not {degree}")
    if not 0.0 <= p <= 1.0:
        raise TopologyError("p", f"must be a rewiring probability in [0, 1], not {p}")
    import networkx as nx

    for child in _child_seeds(seed):
        edges = _edges_of(nx.watts_strogatz_graph(n, degree, p, seed=int(child)))
        if components(n, edges) == 1:
            return edges
    raise TopologyError("p", f"watts-strogatz graphs stayed disconnected in {DRAWS} draws")


def barabasi_albert(n: int, m: int, seed: int) -> Edges:
    """Preferential attachment: each new node links to m existing ones (always connected)."""
    if not 1 <= m < n:
        raise TopologyError("m", f"must be in 1..{n - 1} (edges per new node), not {m}")
    import networkx as nx

    return _edges_of(nx.barabasi_albert_graph(n, m, seed=int(_child_seeds(seed)[0])))
