"""Relays for edges between members that accept no connection (``topology.relays``)."""

from __future__ import annotations

import random
from collections import Counter

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topology.errors import NoRelay, TopologyError
from topology.relays import assign_relays, edge, relayed_edges


def ring(names: list[str]) -> list[tuple[str, str]]:
    return [(names[i], names[(i + 1) % len(names)]) for i in range(len(names))]


NAMES = [f"n{i:02d}" for i in range(12)]


def test_only_edges_between_two_unreachable_members_get_a_relay() -> None:
    members = NAMES[:6]
    reachable = {"n00", "n03"}
    got = assign_relays(members, reachable, ring(members))
    assert set(got) == {("n01", "n02"), ("n04", "n05")}
    assert set(got.values()) <= reachable
    # six sites, four unreachable, on a ring: two relayed edges, one per relay
    assert sorted(Counter(got.values()).values()) == [1, 1]


def test_the_assignment_is_the_same_whatever_order_the_inputs_come_in() -> None:
    members = NAMES[:10]
    graph = nx.random_regular_graph(3, 10, seed=4)
    edges = [(members[a], members[b]) for a, b in graph.edges]
    reachable = {"n02", "n07", "n09"}
    first = assign_relays(members, reachable, edges)
    shuffled = list(edges)
    random.Random(1).shuffle(shuffled)
    flipped = [(b, a) for a, b in shuffled] + shuffled[:3]  # other spelling, repeats
    again = assign_relays(list(reversed(members)), sorted(reachable, reverse=True), flipped)
    assert again == first and first


@given(
    n=st.integers(4, 12),
    reachable=st.integers(2, 4),
    seed=st.integers(0, 10_000),
)
@settings(max_examples=60, deadline=None)
def test_no_single_relay_carries_every_pair_when_two_or_more_can(
    n: int, reachable: int, seed: int
) -> None:
    members = NAMES[:n]
    rng = random.Random(seed)
    open_ = set(rng.sample(members, min(reachable, n - 2)))
    graph = nx.gnp_random_graph(n, 0.6, seed=seed)
    edges = [(members[a], members[b]) for a, b in graph.edges]
    got = assign_relays(members, open_, edges)
    assert set(got) == set(relayed_edges(members, open_, edges))
    for (a, b), relay in got.items():
        assert a not in open_ and b not in open_ and relay in open_
    load = Counter(got.values())
    if len(got) >= 2 and len(open_) >= 2:
        assert len(load) >= 2  # spread
        assert max(load.values()) - min(load[r] for r in open_) <= 1  # and balanced


def test_an_absent_relay_is_replaced_and_nothing_else_moves() -> None:
    members = NAMES[:12]
    graph = nx.random_regular_graph(4, 12, seed=2)
    edges = [(members[a], members[b]) for a, b in graph.edges]
    reachable = {"n01", "n05", "n08"}
    before = assign_relays(members, reachable, edges)
    gone = Counter(before.values()).most_common(1)[0][0]
    after = assign_relays(members, reachable, edges, absent={gone})
    assert set(after) == set(before)
    assert gone not in after.values()
    for e, relay in before.items():
        if relay != gone:
            assert after[e] == relay  # only the absent relay's edges moved
    moved = [after[e] for e, relay in before.items() if relay == gone]
    assert len(set(moved)) == min(2, len(moved))  # spread over both survivors
    # when it comes back it gets its edges back; an absent unreachable member changes nothing
    assert assign_relays(members, reachable, edges, absent={"n00"}) == before


def test_no_reachable_member_is_a_clear_error_naming_an_edge() -> None:
    members = NAMES[:4]
    with pytest.raises(NoRelay, match="no reachable member exists") as info:
        assign_relays(members, set(), ring(members))
    assert info.value.parameter == "relays" and "n0" in info.value.rule
    with pytest.raises(NoRelay, match="no reachable member is present"):
        assign_relays(members, {"n00"}, ring(members), absent={"n00"})
    # no edge needs a relay: nothing to refuse, even with nobody reachable
    assert assign_relays(members, {"n00", "n02"}, ring(members), absent={"n00", "n02"}) == {}
    assert isinstance(info.value, TopologyError)


@pytest.mark.parametrize(
    ("members", "reachable", "edges", "match"),
    [
        (["a", "a"], set(), [], "listed twice"),
        (["a", "b"], {"c"}, [], "not members"),
        (["a", "b"], set(), [("a", "c")], "not a member"),
        (["a", "b"], set(), [("a", "a")], "itself"),
    ],
)
def test_inconsistent_input_is_refused(
    members: list[str], reachable: set[str], edges: list[tuple[str, str]], match: str
) -> None:
    with pytest.raises(TopologyError, match=match):
        assign_relays(members, reachable, edges)


def test_an_edge_has_one_spelling() -> None:
    assert edge("b", "a") == edge("a", "b") == ("a", "b")
