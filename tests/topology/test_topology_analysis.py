"""Analysis: each eigen-solver path agrees with the closed forms; diameter; summary."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from topology import analysis, build, spectral_gap, summary
from topology.analysis import steps_to_shrink
from topology.distances import diameter, union_adjacency

KEYS = {
    "kind",
    "nodes",
    "edges",
    "connected",
    "degree_min",
    "degree_max",
    "diameter",
    "spectral_gap",
    "doubly_stochastic",
    "exact_averaging_steps",
}


def dense_gap(w: sp.csr_array) -> float:
    m = w.toarray()
    m = m - m.mean(axis=0, keepdims=True)
    return 1 - float(np.abs(np.linalg.eigvals(m)).max())


def test_large_ring_uses_the_fft_and_matches_the_closed_form() -> None:
    n = 20_000
    expected = 1 - (1 / 3 + (2 / 3) * math.cos(2 * math.pi / n))
    assert spectral_gap(build("ring", n).mixing()) == pytest.approx(expected, rel=1e-6)


def test_slow_path_falls_back_to_shift_invert() -> None:
    n = 1200
    expected = (2 / 3) * (1 - math.cos(math.pi / n))  # lazy reflecting walk: 1/3 + 2/3 cos(pi k/n)
    assert spectral_gap(build("path", n).mixing()) == pytest.approx(expected, rel=1e-5)


def test_sparse_lanczos_agrees_with_dense() -> None:
    w = build("regular", 600, degree=5, seed=2).mixing()
    assert n_of(w) > analysis.DENSE_LIMIT
    assert spectral_gap(w) == pytest.approx(dense_gap(w), abs=1e-7)


def test_torus_closed_form() -> None:
    m = 20
    expected = (2 / 5) * (1 - math.cos(2 * math.pi / m))
    assert spectral_gap(build("torus", m * m).mixing()) == pytest.approx(expected, rel=1e-7)


def test_directed_gap_matches_dense() -> None:
    w = build("exponential-directed", 24).mixing()
    assert spectral_gap(w) == pytest.approx(dense_gap(w), abs=1e-10)


def test_disconnected_matrix_has_gap_zero() -> None:
    two_pairs = sp.csr_array(np.kron(np.eye(2), np.full((2, 2), 0.5)))
    assert spectral_gap(two_pairs) == 0.0


def n_of(w: sp.csr_array) -> int:
    return int(w.shape[0])


@pytest.mark.parametrize("seed", range(5))
def test_diameter_matches_networkx(seed: int) -> None:
    for kind, n in (("watts-strogatz", 60), ("barabasi-albert", 80), ("erdos-renyi", 50)):
        topo = build(kind, n, seed=seed)
        adj = union_adjacency([topo.mixing()])
        assert diameter(adj, directed=False) == nx.diameter(topo.graph())
    directed = build("exponential-directed", 37)
    adj = union_adjacency([directed.mixing()])
    assert diameter(adj, directed=True) == nx.diameter(directed.graph())


def test_summary_of_ring_16() -> None:
    s = summary(build("ring", 16))
    assert set(s) >= KEYS
    assert s["kind"] == "ring" and s["nodes"] == 16 and s["edges"] == 16
    assert s["connected"] and s["doubly_stochastic"]
    assert (s["degree_min"], s["degree_max"], s["diameter"]) == (2, 2, 8)
    assert s["spectral_gap"] == pytest.approx(0.050746978, abs=1e-6)
    assert s["exact_averaging_steps"] is None
    assert s["steps_to_1000x"] == steps_to_shrink(s["spectral_gap"])


def test_summary_of_schedules() -> None:
    s = summary(build("one-peer-exponential", 16))
    assert s["exact_averaging_steps"] == 4 and s["spectral_gap"] == 1.0
    assert (s["degree_min"], s["degree_max"], s["edges"]) == (1, 1, 16)
    assert s["connected"] and s["period"] == 4 and s["directed"]
    r = summary(build("random-regular-per-round", 32, degree=3))
    assert r["period"] is None and r["exact_averaging_steps"] is None
    assert 0 < r["spectral_gap"] < 1 and r["connected"]


def test_steps_to_shrink() -> None:
    assert steps_to_shrink(0.0) is None
    assert steps_to_shrink(1.0) == 1
    assert steps_to_shrink(0.9) == 3  # 0.1 ** 3 = 1e-3
    small = 1e-4
    assert steps_to_shrink(small) == pytest.approx(math.log(1000) / small, rel=1e-3)


def test_every_diameter_strategy_agrees_with_networkx() -> None:
    checked = 0
    for seed in range(6):  # directed, not circulant: bit-parallel BFS from every node
        g = nx.gnp_random_graph(50, 0.1, seed=seed, directed=True)
        if nx.is_strongly_connected(g):
            adj = sp.csr_array(nx.to_scipy_sparse_array(g).T)  # A[i, j] = 1 when j -> i
            assert diameter(adj, directed=True) == nx.diameter(g)
            checked += 1
    assert checked >= 3
    expander = build("regular", 400, degree=5, seed=1)  # bounding prunes little here
    assert summary(expander)["diameter"] == nx.diameter(expander.graph())
    assert summary(build("ring", 2001))["diameter"] == 1000  # transitive: one BFS
    assert summary(build("torus", 400))["diameter"] == 20
    assert diameter(union_adjacency([two_components()]), directed=False) is None


def two_components() -> sp.csr_array:
    return sp.csr_array(np.kron(np.eye(2), np.full((2, 2), 0.5)))
