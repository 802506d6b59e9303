"""Finite-time averaging schedules: k-peer hyper-hypercube and Base-(k+1) graphs.

Takezawa et al. 2023, "Beyond Exponential Graph: Communication-Efficient
Topologies for Decentralized Learning via Finite-time Convergence". With
``b = k + 1`` and at most ``k`` neighbours per node and step, the product of
the schedule's matrices is exactly the averaging matrix ``J = 11^T / n``, for
any ``n``. The construction, restated in our terms:

1. Hyper-hypercube (n has no prime factor above b): write ``n = f_1 ... f_R``
   with every ``f_r <= b`` (fewest factors); number nodes in that mixed radix;
   at step r each group of ``f_r`` nodes differing only in digit r averages as
   a clique. After R steps every node holds the mean.
2. Simple Base-(k+1) (any n): write n in base b, ``n = sum_l a_l b^{p_l}``
   with ``p_1 > p_2 > ...``, and cut the nodes into sets ``V_l`` of those
   sizes, each made of ``a_l`` sub-blocks of ``b^{p_l}`` nodes.
   - Each ``V_l`` averages internally (hyper-hypercube): ``V_l`` holds ``m_l``.
   - Merge step s: every node of the smaller sets ``U = V_{s+1} u ...`` pairs
     with one node in each sub-block of ``V_s`` (there are enough, because
     ``|U| < b^{p_s}``); it keeps ``1 - n_s/N_s`` and takes ``n_s/(N_s a_s)`` from
     each partner, where ``N_s = |V_s u U|``. By induction every node of ``U``
     then holds ``(N_{s+1}/n) m_l + sum_{t<=s} (n_t/n) m_t``, and every
     sub-block of ``V_s`` has the global mean as its own mean.
   - From the step after its merge, each sub-block of ``V_s`` averages
     internally (a hyper-hypercube of ``p_s`` steps of b-cliques); the last
     set is exact right after the last merge. All sets finish by the time
     ``V_1``'s sub-blocks do.
3. Base-(k+1): split ``n = c * r`` where c collects the prime factors up to b;
   run Simple Base-(k+1) on c groups of r nodes in parallel, then a
   hyper-hypercube across the groups. Take whichever of (2) and (3) is shorter.

Each step is a union of cliques and weighted pairs on disjoint nodes, so
every matrix is symmetric and doubly stochastic by construction; untouched
nodes keep their model (weight 1 on the diagonal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from topology.weights import clique_entries, from_entries

IntArray = npt.NDArray[np.int64]


@dataclass
class Step:
    """COO entries of one step's matrix for the nodes it touches."""

    rows: list[IntArray] = field(default_factory=list)
    cols: list[IntArray] = field(default_factory=list)
    vals: list[npt.NDArray[np.float64]] = field(default_factory=list)

    def add(self, other: Step) -> None:
        self.rows += other.rows
        self.cols += other.cols
        self.vals += other.vals

    def cliques(self, groups: IntArray) -> None:
        if groups.shape[1] > 1:
            r, c, v = clique_entries(groups)
            self.rows.append(r)
            self.cols.append(c)
            self.vals.append(v)

    def pairs(self, i: IntArray, j: IntArray, weight: float) -> None:
        self.rows += [i, j]
        self.cols += [j, i]
        self.vals += [np.full(len(i), weight), np.full(len(j), weight)]

    def keep(self, nodes: IntArray, weight: float) -> None:
        self.rows.append(nodes)
        self.cols.append(nodes)
        self.vals.append(np.full(len(nodes), weight))

    def matrix(self, n: int) -> sp.csr_array:
        rows = np.concatenate([np.zeros(0, np.int64), *self.rows])
        touched = np.zeros(n, dtype=bool)
        touched[rows] = True
        idle = np.flatnonzero(~touched)
        return from_entries(
            n,
            np.concatenate([rows, idle]),
            np.concatenate([np.zeros(0, np.int64), *self.cols, idle]),
            np.concatenate([np.zeros(0), *self.vals, np.ones(len(idle))]),
        )


@lru_cache(maxsize=4096)
def smooth_factors(size: int, b: int) -> tuple[int, ...] | None:
    """The fewest factors in 2..b whose product is ``size`` (``()`` for 1), or None."""
    if size == 1:
        return ()
    best: tuple[int, ...] | None = None
    for f in range(min(b, size), 1, -1):
        if size % f == 0:
            rest = smooth_factors(size // f, b)
            if rest is not None and (best is None or len(rest) + 1 < len(best)):
                best = (f, *rest)
    return best


def hyper_hypercube(nodes: IntArray, b: int) -> list[Step]:
    """Exact averaging within each row of ``nodes`` (shape ``(copies, N)``), N b-smooth."""
    size = nodes.shape[1]
    factors = smooth_factors(size, b)
    if factors is None:
        raise ValueError(f"{size} has a prime factor above {b}")
    steps = []
    stride = 1
    idx = np.arange(size)
    for f in factors:
        bases = idx[(idx // stride) % f == 0]
        members = bases[:, None] + stride * np.arange(f)[None, :]
        step = Step()
        step.cliques(nodes[:, members].reshape(-1, f))
        steps.append(step)
        stride *= f
    return steps


def _parallel(schedules: list[list[Step]]) -> list[Step]:
    """Run schedules on disjoint nodes side by side; shorter ones idle at the end."""
    length = max((len(s) for s in schedules), default=0)
    merged = [Step() for _ in range(length)]
    for schedule in schedules:
        for t, step in enumerate(schedule):
            merged[t].add(step)
    return merged


def _digits(size: int, b: int) -> list[tuple[int, int]]:
    """``size`` in base b as ``(a, p)`` pairs with ``a != 0``, highest power first."""
    out = []
    p = 0
    while size:
        size, a = divmod(size, b)
        if a:
            out.append((a, p))
        p += 1
    return out[::-1]


def simple_base(nodes: IntArray, b: int) -> list[Step]:
    """Simple Base-(k+1) on each row of ``nodes`` (shape ``(copies, N)``), in parallel."""
    copies, size = nodes.shape
    if smooth_factors(size, b) is not None:
        return hyper_hypercube(nodes, b)
    blocks = _digits(size, b)
    sets: list[IntArray] = []  # each (copies, a * b^p)
    subs: list[IntArray] = []  # each (copies, a, b^p)
    start = 0
    for a, p in blocks:
        width = a * b**p
        sets.append(nodes[:, start : start + width])
        subs.append(sets[-1].reshape(copies, a, b**p))
        start += width
    sizes = [s.shape[1] for s in sets]
    steps = _parallel([hyper_hypercube(s, b) for s in sets])
    inner = [hyper_hypercube(sub.reshape(-1, sub.shape[2]), b) for sub in subs]
    done = [0] * len(sets)
    s = 0
    while done[0] < len(inner[0]):
        step = Step()
        if s <= len(sets) - 2:
            step.add(_merge(sets[s + 1 :], subs[s], sizes[s] / sum(sizes[s:])))
        for l_ in range(min(s, len(sets) - 1)):
            if done[l_] < len(inner[l_]):
                step.add(inner[l_][done[l_]])
                done[l_] += 1
        steps.append(step)
        s += 1
    return steps


def _merge(smaller: list[IntArray], sub: IntArray, share: float) -> Step:
    """One merge step: each node of ``smaller`` pairs with one node per sub-block of ``sub``."""
    receivers = np.concatenate(smaller, axis=1)  # (copies, R)
    count = receivers.shape[1]
    a = sub.shape[1]
    partners = sub[:, :, -count:]  # (copies, a, R)
    weight = share / a
    step = Step()
    step.pairs(np.repeat(receivers[:, None, :], a, axis=1).ravel(), partners.ravel(), weight)
    step.keep(receivers.ravel(), 1.0 - share)
    step.keep(partners.ravel(), 1.0 - weight)
    return step


def base_schedule(n: int, k: int) -> list[sp.csr_array]:
    """The Base-(k+1) schedule on nodes 0..n-1: at most k neighbours per step, exact."""
    b = k + 1
    nodes = np.arange(n, dtype=np.int64)[None, :]
    simple = simple_base(nodes, b)
    rest = n
    for f in range(2, b + 1):
        while rest % f == 0:
            rest //= f
    best = simple
    if 1 < rest < n:
        groups = nodes.reshape(n // rest, rest)
        split = simple_base(groups, b) + hyper_hypercube(np.ascontiguousarray(groups.T), b)
        if len(split) < len(simple):
            best = split
    return [step.matrix(n) for step in best]
