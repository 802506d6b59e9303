"""Thresholds, the dropout report, refusals, the partner graph and the phase table."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.errors import LocalProtocolError
from protocols.secagg import (
    CITATIONS,
    TRANSITIONS,
    Phase,
    RoundContext,
    SecAggConfig,
    check_config,
    dropout_tolerance,
    mask_partners,
    threshold_for,
)
from protocols.secagg.graph import connectivity, is_connected
from protocols.secagg.phases import advance, is_final


@pytest.mark.parametrize(("d", "t"), [(2, 2), (3, 2), (4, 3), (5, 3), (8, 5), (9, 5)])
def test_threshold_defaults_to_a_majority_of_at_least_two(d: int, t: int) -> None:
    assert threshold_for(SecAggConfig(), d) == t == check_config(SecAggConfig(), d)


def test_explicit_threshold_must_fit_the_neighbourhood() -> None:
    assert check_config(SecAggConfig(threshold=4), 6) == 4
    with pytest.raises(LocalProtocolError, match="t=4 does not fit node 'x' with degree 3"):
        check_config(SecAggConfig(threshold=4), 3, node="x")


@pytest.mark.parametrize("degree", [0, 1])
def test_fewer_than_two_neighbours_are_refused_naming_node_and_degree(degree: int) -> None:
    with pytest.raises(LocalProtocolError, match=rf"node 'leaf-7': degree {degree}"):
        check_config(SecAggConfig(), degree, node="leaf-7")


def test_dropout_report_per_node() -> None:
    report = dropout_tolerance(SecAggConfig(), {"a": 2, "b": 3, "c": 8, "d": 16})
    assert report == {"a": 0, "b": 1, "c": 3, "d": 7}
    sparse = dropout_tolerance(SecAggConfig(sparse_k=3), {"c": 8, "d": 16, "e": 4})
    assert sparse == {"c": 2, "d": 2, "e": 1}  # k-connectivity caps it at k - 1
    with pytest.raises(LocalProtocolError, match="'lonely': degree 1"):
        dropout_tolerance(SecAggConfig(), {"ok": 4, "lonely": 1})


def test_round_context_sorts_and_validates() -> None:
    ctx = RoundContext(b"f", 1, "r", ("c", "a", "b"), SecAggConfig())
    assert ctx.neighbourhood == ("a", "b", "c") and ctx.index("c") == 3
    with pytest.raises(LocalProtocolError, match="own neighbour"):
        RoundContext(b"f", 1, "r", ("r", "a"), SecAggConfig())
    with pytest.raises(LocalProtocolError, match="twice"):
        RoundContext(b"f", 1, "r", ("a", "a", "b"), SecAggConfig())
    with pytest.raises(LocalProtocolError, match="not a neighbour"):
        ctx.index("zz")


def graph(n: int, k: int | None, round: int = 0, seed: bytes = b"s") -> dict[str, frozenset[str]]:
    roster = [f"n{i}" for i in range(n)]
    return mask_partners(
        roster, sparse_k=k, graph_seed=seed, federation_id=b"f", round=round, receiver="r"
    )


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 12), st.integers(2, 6))
def test_sparse_graph_is_symmetric_regular_and_k_connected(n: int, k: int) -> None:
    partners = graph(n, k)
    for a, others in partners.items():
        assert a not in others
        assert all(a in partners[b] for b in others)
    kappa = connectivity(n, k)
    assert {len(p) for p in partners.values()} == {kappa}
    assert kappa >= min(k, n - 1)
    for removed in itertools.combinations(partners, kappa - 1):
        assert is_connected(partners, set(partners) - set(removed))


def test_sparse_graph_is_public_and_changes_with_round_and_seed() -> None:
    assert graph(10, 2, round=1) == graph(10, 2, round=1)
    assert graph(10, 2, round=1) != graph(10, 2, round=2)
    assert graph(10, 2, seed=b"x") != graph(10, 2, seed=b"y")
    complete = graph(5, None)
    assert all(len(p) == 4 for p in complete.values())
    assert graph(5, 4) == complete


def test_phase_table_moves_forward_or_abandons() -> None:
    order = [Phase.ADVERTISE, Phase.SHARE, Phase.MASKED, Phase.UNMASK, Phase.DONE]
    for before, after in itertools.pairwise(order):
        assert TRANSITIONS[before] == {after, Phase.ABANDONED}
        assert advance(before, after) is after
        with pytest.raises(LocalProtocolError, match="cannot go from"):
            advance(after, before)
    assert is_final(Phase.DONE) and is_final(Phase.ABANDONED)
    with pytest.raises(LocalProtocolError):
        advance(Phase.DONE, Phase.ABANDONED)
    with pytest.raises(LocalProtocolError):
        advance(Phase.ADVERTISE, Phase.MASKED)


def test_every_phase_cites_its_protocol_step() -> None:
    assert set(CITATIONS) == set(Phase)
    assert "Round 0" in CITATIONS[Phase.ADVERTISE]
    assert "Round 1" in CITATIONS[Phase.SHARE]
    assert "Round 2" in CITATIONS[Phase.MASKED] and "Bell et al. 2020" in CITATIONS[Phase.MASKED]
    assert "Round 4" in CITATIONS[Phase.UNMASK]
