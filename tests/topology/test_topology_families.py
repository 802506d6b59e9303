"""Every family builds, honours the Topology contract, and is reproducible from its seed."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from topology import APERIODIC, FAMILIES, Topology, TopologyError, build

GRAPHS = "simulations/graphs"

# A node count each family accepts, and its expected shape.
CASES = {
    "ring": 10,
    "path": 10,
    "star": 10,
    "complete": 10,
    "torus": 16,
    "hypercube": 16,
    "regular": 10,
    "erdos-renyi": 20,
    "watts-strogatz": 12,
    "barabasi-albert": 12,
    "exponential": 12,
    "exponential-directed": 12,
    "one-peer-exponential": 16,
    "base-k": 12,
    "random-regular-per-round": 10,
}


def make(kind: str, n: int | None = None, **kw: object) -> Topology:
    return build(kind, CASES[kind] if n is None else n, **kw)  # type: ignore[arg-type]


def test_the_catalogue_has_exactly_the_agreed_names() -> None:
    assert set(FAMILIES) == set(CASES) | {"file"}
    for info in FAMILIES.values():
        assert info.description
        assert info.time_varying == (
            info.name in {"one-peer-exponential", "base-k", "random-regular-per-round"}
        )
        assert info.directed == (info.name in {"exponential-directed", "one-peer-exponential"})


@pytest.mark.parametrize("kind", sorted(CASES))
def test_contract(kind: str) -> None:
    topo = make(kind)
    n = CASES[kind]
    assert (topo.kind, topo.n) == (kind, n)
    assert topo.directed == FAMILIES[kind].directed
    assert topo.time_varying == FAMILIES[kind].time_varying
    assert topo.doubly_stochastic  # every family here, directed ones included
    for step in range(3):
        w = topo.mixing(step)
        assert isinstance(w, sp.csr_array)
        assert w.dtype == np.float64 and w.shape == (n, n)
        g = topo.graph(step)
        assert isinstance(g, nx.DiGraph if topo.directed else nx.Graph)
        assert sorted(g.nodes) == list(range(n))
        dense = w.toarray()
        for i in range(n):
            incoming = tuple(j for j in range(n) if j != i and dense[i, j] != 0)
            outgoing = tuple(j for j in range(n) if j != i and dense[j, i] != 0)
            assert topo.in_neighbours(i, step) == incoming
            assert topo.out_neighbours(i, step) == outgoing
            if topo.directed:
                assert tuple(sorted(g.predecessors(i))) == incoming
            else:
                assert tuple(sorted(g.neighbors(i))) == incoming


@pytest.mark.parametrize("kind", sorted(CASES))
def test_same_seed_same_topology(kind: str) -> None:
    a, b = make(kind, seed=7), make(kind, seed=7)
    for step in range(3):
        assert (a.mixing(step) != b.mixing(step)).nnz == 0


@pytest.mark.parametrize("kind", ["regular", "erdos-renyi", "watts-strogatz", "barabasi-albert"])
def test_seeds_change_random_graphs(kind: str) -> None:
    n = 40
    patterns = {tuple(make(kind, n, seed=s).mixing().indices) for s in range(4)}
    assert len(patterns) > 1


def test_static_periods_and_caching() -> None:
    ring = build("ring", 8)
    assert ring.period == 1 and not ring.time_varying
    assert ring.mixing(0) is ring.mixing(5)
    with pytest.raises(ValueError):
        ring.mixing().data[0] = 2.0  # handed out read-only, so the cache stays intact


def test_periodic_schedules_cycle() -> None:
    topo = build("one-peer-exponential", 16)
    assert topo.period == 4
    assert topo.mixing(1) is topo.mixing(5)
    assert topo.in_neighbours(3, step=1) == (1,)  # 1 sends to 1 + 2
    assert topo.out_neighbours(3, step=1) == (5,)


def test_random_per_round_is_a_function_of_seed_and_step() -> None:
    a = build("random-regular-per-round", 30, degree=3, seed=5)
    b = build("random-regular-per-round", 30, degree=3, seed=5)
    assert a.period == APERIODIC and a.time_varying
    later = b.mixing(1000)  # computed alone, without the steps before it
    assert (a.mixing(1000) != later).nnz == 0
    assert (a.mixing(0) != a.mixing(1)).nnz > 0
    for step in range(20):  # far more steps than the cache holds
        degrees = np.diff(a.mixing(step).indptr) - 1
        assert set(degrees.tolist()) == {3}


def test_base_k_accepts_degree_as_k_and_watts_strogatz_k_as_degree() -> None:
    assert (build("base-k", 24, degree=2).mixing(0) != build("base-k", 24, k=2).mixing(0)).nnz == 0
    assert build("watts-strogatz", 20, k=6).params["degree"] == 6
    with pytest.raises(TopologyError) as err:
        build("base-k", 24, degree=2, k=3)
    assert err.value.parameter == "k"


def test_defaults_are_recorded() -> None:
    assert build("regular", 10).params["degree"] == 4
    assert build("regular", 4).params["degree"] == 3  # min(4, n - 1): the complete graph
    p = build("erdos-renyi", 50).params["p"]
    assert p == pytest.approx(2 * np.log(50) / 50)
    assert build("base-k", 10).params["k"] == 1


def test_none_means_not_given() -> None:
    """A configuration passes every optional field straight through."""
    topo = build("ring", 6, degree=None, path=None, p=None, k=None, m=None)
    assert topo.kind == "ring"


@pytest.mark.parametrize(
    ("kind", "n", "edges"),
    [
        ("ring", 10, 10),
        ("path", 10, 9),
        ("star", 10, 9),
        ("complete", 10, 45),
        ("torus", 16, 32),
        ("hypercube", 16, 32),
        ("exponential", 16, 16 * 7 // 2),
        ("regular", 10, 20),
    ],
)
def test_edge_counts(kind: str, n: int, edges: int) -> None:
    assert build(kind, n).graph().number_of_edges() == edges


def test_exponential_graphs_link_powers_of_two() -> None:
    undirected = build("exponential", 16)
    assert undirected.in_neighbours(0) == (1, 2, 4, 8, 12, 14, 15)
    directed = build("exponential-directed", 16)
    assert directed.out_neighbours(0) == (1, 2, 4, 8)
    assert directed.in_neighbours(0) == (8, 12, 14, 15)


def test_file_family_reads_the_examples() -> None:
    topo = build("file", 10, path=f"{GRAPHS}/petersen.edgelist")
    assert nx.is_isomorphic(topo.graph(), nx.petersen_graph())
    named = build("file", 8, path=f"{GRAPHS}/hospitals.toml")
    assert named.params["labels"][0] == "charite"


def test_torus_is_the_grid_with_wraparound() -> None:
    expected = nx.grid_2d_graph(4, 4, periodic=True)
    assert nx.is_isomorphic(build("torus", 16).graph(), expected)


def test_hypercube_is_the_hypercube() -> None:
    assert nx.is_isomorphic(build("hypercube", 32).graph(), nx.hypercube_graph(5))


def test_large_random_regular_is_quick_and_exact() -> None:
    topo = build("regular", 3000, degree=8, seed=3)
    degrees = np.diff(topo.mixing().indptr) - 1
    assert set(degrees.tolist()) == {8}
    dense = build("regular", 12, degree=9)  # answered by the complement of a 2-regular graph
    assert set((np.diff(dense.mixing().indptr) - 1).tolist()) == {9}


def test_lenient_build_drops_parameters_meant_for_other_families() -> None:
    """One configuration can sweep families: degree=4 reaches the regular graph, not the ring."""
    assert build("ring", 8, degree=4, p=0.3, strict=False).params == {}
    assert build("regular", 8, degree=4, p=0.3, strict=False).params == {"degree": 4, "seed": 0}
    with pytest.raises(TopologyError) as err:
        build("ring", 8, degree=4)
    assert err.value.parameter == "degree"
    with pytest.raises(TopologyError) as err:
        build("ring", 8, degre=4, strict=False)  # a typo is never dropped
    assert err.value.parameter == "degre"
