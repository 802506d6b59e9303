"""Nodes over processes: a partition that cuts few edges, and the halo each step needs.

A sharded simulation gives each process (a rank) a block of the nodes; mixing a
node needs the rows of its in-neighbours, so every edge between two blocks costs
one row sent per round and per direction. ``partition`` chooses the blocks:

- rings, paths and tori keep their natural order in contiguous blocks (a ring
  of ``n`` nodes in ``k >= 2`` arcs cuts exactly ``k`` edges, a path ``k - 1``);
- any other graph is bisected recursively with Kernighan-Lin (networkx), each
  bisection keeping the two sides at the sizes of the balanced split, and the
  result is kept only where it cuts fewer edges than contiguous blocks.

Block sizes differ by at most one node (the first ``n % k`` blocks hold one
more). A partition is a deterministic function of the graph, the number of
blocks and the seed, so every rank computes the same one on its own.

``halo_plan`` reads one step's mixing matrix: which rows each rank sends to
each other rank (node ``j`` goes to rank ``b`` when some node of ``b`` mixes
``j`` in), and for secure mixing which (receiver, sender) pairs cross ranks,
since each pair is its own fixed-point contribution.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from topology.errors import TopologyError

NATURAL_ORDER = frozenset({"ring", "path", "torus"})
"""Families whose node order is already a good partition: contiguous blocks are optimal."""

Blocks = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Partition:
    """Each rank's nodes (ascending), how they were chosen, and the undirected edges cut."""

    blocks: Blocks
    method: str  # "contiguous" or "kernighan-lin"
    cut: int

    @property
    def parts(self) -> int:
        return len(self.blocks)

    def owner(self, n: int) -> npt.NDArray[np.int64]:
        """The rank of every node, as an array of length ``n``."""
        owners = np.full(n, -1, dtype=np.int64)
        for rank, block in enumerate(self.blocks):
            owners[list(block)] = rank
        return owners


def block_sizes(n: int, parts: int) -> list[int]:
    """Balanced sizes: the first ``n % parts`` blocks hold one node more."""
    if parts < 1:
        raise TopologyError("parts", f"a partition needs at least one block, got {parts}")
    if parts > n:
        raise TopologyError(
            "parts", f"cannot split {n} nodes into {parts} blocks: more blocks than nodes"
        )
    base, extra = divmod(n, parts)
    return [base + (1 if b < extra else 0) for b in range(parts)]


def contiguous(n: int, parts: int) -> Blocks:
    """Nodes 0..n-1 in natural order, cut into balanced contiguous blocks."""
    blocks, start = [], 0
    for size in block_sizes(n, parts):
        blocks.append(tuple(range(start, start + size)))
        start += size
    return tuple(blocks)


def pattern(matrices: Iterable[Any]) -> sp.csr_array:
    """The undirected edge pattern of the union of mixing matrices (no self loops)."""
    union: sp.csr_array | None = None
    for w in matrices:
        a = sp.csr_array(w, dtype=np.float64)
        a = sp.csr_array((a != 0).astype(np.int8))
        union = a if union is None else sp.csr_array(union + a)
    if union is None:
        raise TopologyError("matrices", "a partition needs at least one mixing matrix")
    sym = sp.csr_array(((union + union.T) != 0).astype(np.int8))
    sym.setdiag(0)
    sym.eliminate_zeros()
    return sym


def cut_edges(adjacency: sp.csr_array, blocks: Blocks) -> int:
    """Undirected edges of ``adjacency`` (symmetric pattern) whose ends lie in different blocks."""
    n = adjacency.shape[0]
    owners = Partition(blocks, "", 0).owner(n)
    coo = sp.coo_array(sp.triu(adjacency, k=1))
    return int(np.count_nonzero(owners[coo.row] != owners[coo.col]))


def partition(adjacency: sp.csr_array, parts: int, kind: str, seed: int = 0) -> Partition:
    """The blocks of ``parts`` ranks over the graph (see the module's notes for the rule)."""
    n = adjacency.shape[0]
    natural = contiguous(n, parts)
    natural_cut = cut_edges(adjacency, natural)
    if kind in NATURAL_ORDER or parts == 1:
        return Partition(natural, "contiguous", natural_cut)
    bisected = kernighan_lin_blocks(adjacency, parts, seed)
    bisected_cut = cut_edges(adjacency, bisected)
    if bisected_cut < natural_cut:
        return Partition(bisected, "kernighan-lin", bisected_cut)
    return Partition(natural, "contiguous", natural_cut)


def kernighan_lin_blocks(adjacency: sp.csr_array, parts: int, seed: int = 0) -> Blocks:
    """Recursive Kernighan-Lin bisection into ``parts`` balanced blocks, rank order by block."""
    import networkx as nx

    graph = nx.from_scipy_sparse_array(adjacency)
    sizes = block_sizes(adjacency.shape[0], parts)
    return tuple(_bisect(graph, list(range(adjacency.shape[0])), sizes, seed))


def _bisect(graph: Any, nodes: list[int], sizes: Sequence[int], seed: int) -> list[tuple[int, ...]]:
    if len(sizes) == 1:
        return [tuple(sorted(nodes))]
    from networkx.algorithms.community import kernighan_lin_bisection

    half = len(sizes) // 2
    first = sum(sizes[:half])
    start = ({*nodes[:first]}, {*nodes[first:]})
    one, other = kernighan_lin_bisection(graph.subgraph(nodes).copy(), partition=start, seed=seed)
    # the swaps keep both sizes, but the two sides may come back in either order
    left, right = (one, other) if len(one) == first else (other, one)
    return [
        *_bisect(graph, sorted(left), sizes[:half], seed),
        *_bisect(graph, sorted(right), sizes[half:], seed),
    ]


@dataclass(frozen=True)
class HaloPlan:
    """What one step's mixing moves between ranks.

    ``rows[a][b]``: the nodes of rank ``a`` whose rows rank ``b`` needs, ascending.
    ``pairs[a][b]``: the (receiver, sender) pairs with the sender on ``a`` and the
    receiver on ``b``, in (receiver, sender) order: what secure mixing sends.
    Both are empty on the diagonal.
    """

    rows: tuple[tuple[tuple[int, ...], ...], ...]
    pairs: tuple[tuple[tuple[tuple[int, int], ...], ...], ...]

    def rows_between(self) -> int:
        """Rows sent between ranks in one exchange, all directions together."""
        return sum(len(r) for row in self.rows for r in row)

    def pairs_between(self) -> int:
        return sum(len(p) for row in self.pairs for p in row)


def halo_plan(w: Any, blocks: Blocks) -> HaloPlan:
    """The halo of mixing matrix ``w`` (x_i <- sum_j w_ij x_j) under ``blocks``."""
    csr = sp.csr_array(w)
    n = csr.shape[0]
    owners = Partition(blocks, "", 0).owner(n)
    if np.any(owners < 0):
        raise TopologyError("blocks", "the blocks do not cover every node of the mixing matrix")
    k = len(blocks)
    coo = sp.coo_array(csr)
    receivers, senders = coo.row.astype(np.int64), coo.col.astype(np.int64)
    keep = (receivers != senders) & (coo.data != 0)
    receivers, senders = receivers[keep], senders[keep]
    rows: list[list[set[int]]] = [[set() for _ in range(k)] for _ in range(k)]
    pairs: list[list[list[tuple[int, int]]]] = [[[] for _ in range(k)] for _ in range(k)]
    for i, j in zip(receivers.tolist(), senders.tolist(), strict=True):
        a, b = int(owners[j]), int(owners[i])
        if a != b:
            rows[a][b].add(j)
            pairs[a][b].append((i, j))
    return HaloPlan(
        tuple(tuple(tuple(sorted(s)) for s in row) for row in rows),
        tuple(tuple(tuple(sorted(p)) for p in row) for row in pairs),
    )
