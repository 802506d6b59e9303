"""Mixing weights: the three undirected rules, push-sum for directed graphs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from topology import TopologyError, build, spectral_gap
from topology.weights import is_column_stochastic, is_doubly_stochastic, is_symmetric


def test_metropolis_ring_of_16_has_the_closed_form_gap() -> None:
    expected = 1 - (1 / 3 + (2 / 3) * math.cos(2 * math.pi / 16))
    assert expected == pytest.approx(0.0507, abs=1e-4)
    assert spectral_gap(build("ring", 16).mixing()) == pytest.approx(expected, abs=1e-6)


def test_complete_graph_gap_is_one() -> None:
    for n in (2, 5, 64):
        assert spectral_gap(build("complete", n).mixing()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("rule", ["metropolis", "max-degree", "uniform"])
@pytest.mark.parametrize("kind", ["ring", "hypercube", "torus", "regular", "exponential"])
def test_rules_give_symmetric_doubly_stochastic_matrices(kind: str, rule: str) -> None:
    w = build(kind, 16, weights=rule).mixing()
    assert is_symmetric(w)
    assert is_doubly_stochastic(w, tol=1e-12)
    assert w.data.min() > 0


def test_metropolis_weights_use_the_larger_degree() -> None:
    w = build("star", 5).mixing().toarray()
    assert w[0, 1] == pytest.approx(1 / 5)  # hub degree 4, leaf degree 1
    assert w[1, 1] == pytest.approx(4 / 5)
    assert w[0, 0] == pytest.approx(1 / 5)


def test_max_degree_weights_are_one_constant() -> None:
    w = build("path", 4, weights="max-degree").mixing().toarray()
    assert w[0, 1] == w[1, 2] == pytest.approx(1 / 3)
    assert w[0, 0] == pytest.approx(2 / 3)
    assert w[1, 1] == pytest.approx(1 / 3)


def test_uniform_weights_refuse_irregular_graphs() -> None:
    assert build("ring", 6, weights="uniform").mixing()[0, 0] == pytest.approx(1 / 3)
    with pytest.raises(TopologyError) as err:
        build("star", 6, weights="uniform")
    assert err.value.parameter == "weights"
    assert "regular" in err.value.rule


def test_irregular_graphs_stay_doubly_stochastic() -> None:
    for rule in ("metropolis", "max-degree"):
        for kind in ("star", "path", "barabasi-albert", "erdos-renyi", "watts-strogatz"):
            assert is_doubly_stochastic(build(kind, 30, weights=rule).mixing(), tol=1e-12)


def test_directed_graphs_get_push_sum_weights() -> None:
    topo = build("exponential-directed", 10)
    w = topo.mixing()
    assert topo.weights == "push-sum"
    assert is_column_stochastic(w) and not is_symmetric(w)
    out_degree = len(topo.out_neighbours(0))
    assert w[1, 0] == pytest.approx(1 / (1 + out_degree))


def test_schedules_weights_are_their_own() -> None:
    topo = build("one-peer-exponential", 8)
    assert topo.weights == "schedule"
    w = topo.mixing(0).toarray()
    assert np.allclose(np.diag(w), 0.5)
    assert is_doubly_stochastic(topo.mixing(0))
