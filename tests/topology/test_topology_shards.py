"""Partitions of nodes over ranks, and the halo each rank sends."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import topology
from topology.errors import TopologyError
from topology.shards import (
    block_sizes,
    contiguous,
    cut_edges,
    halo_plan,
    kernighan_lin_blocks,
    partition,
    pattern,
)


def adjacency(kind: str, n: int, **params: object) -> sp.csr_array:
    return pattern([topology.build(kind, n, **params).mixing(0)])


@pytest.mark.parametrize("parts", [2, 3, 4, 7])
def test_a_ring_in_contiguous_arcs_is_cut_once_per_arc(parts: int) -> None:
    p = partition(adjacency("ring", 28), parts, "ring")
    assert p.method == "contiguous"
    assert p.cut == parts  # each arc meets the next once, the last meets the first
    assert p.blocks == contiguous(28, parts)


@pytest.mark.parametrize("parts", [2, 3, 5])
def test_a_path_in_contiguous_pieces_is_cut_between_pieces(parts: int) -> None:
    assert partition(adjacency("path", 20), parts, "path").cut == parts - 1


def test_a_torus_keeps_its_natural_order() -> None:
    p = partition(adjacency("torus", 16), 2, "torus")
    assert p.method == "contiguous" and p.blocks == contiguous(16, 2)
    assert p.cut == 8  # two 4x4 halves: 4 edges across the middle, 4 across the wrap


def test_blocks_are_balanced_and_cover_every_node() -> None:
    assert block_sizes(10, 4) == [3, 3, 2, 2]
    for parts in (1, 2, 3, 4, 6):
        blocks = kernighan_lin_blocks(adjacency("regular", 24, degree=4), parts)
        assert sorted(len(b) for b in blocks) == sorted(block_sizes(24, parts))
        assert sorted(i for b in blocks for i in b) == list(range(24))


def test_kernighan_lin_finds_two_interleaved_communities() -> None:
    # evens form one clique, odds another, one edge between them: natural order cuts many
    n = 16
    rows, cols = [], []
    for parity in (0, 1):
        members = range(parity, n, 2)
        rows += [i for i in members for j in members if i != j]
        cols += [j for i in members for j in members if i != j]
    rows += [0, 1]
    cols += [1, 0]
    adj = sp.csr_array((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    p = partition(adj, 2, "file")
    assert p.method == "kernighan-lin" and p.cut == 1
    assert p.blocks in ((tuple(range(0, n, 2)), tuple(range(1, n, 2))),) or p.blocks == (
        tuple(range(1, n, 2)),
        tuple(range(0, n, 2)),
    )
    assert cut_edges(adj, contiguous(n, 2)) > p.cut


def test_contiguous_blocks_are_kept_where_kernighan_lin_does_no_better() -> None:
    p = partition(adjacency("complete", 8), 2, "complete")
    assert p.method == "contiguous" and p.cut == 16


def test_more_blocks_than_nodes_is_refused() -> None:
    with pytest.raises(TopologyError, match="more blocks than nodes"):
        partition(adjacency("ring", 4), 5, "ring")


def test_the_halo_of_a_ring_is_the_ends_of_each_arc() -> None:
    w = topology.build("ring", 8).mixing(0)
    plan = halo_plan(w, contiguous(8, 2))
    assert plan.rows[0][1] == (0, 3) and plan.rows[1][0] == (4, 7)
    assert plan.rows[0][0] == plan.rows[1][1] == ()
    assert plan.pairs[0][1] == ((4, 3), (7, 0))  # (receiver on rank 1, sender on rank 0)
    assert plan.pairs[1][0] == ((0, 7), (3, 4))
    assert plan.rows_between() == 4 and plan.pairs_between() == 4


def test_a_row_needed_by_two_receivers_of_one_rank_is_sent_once() -> None:
    w = topology.build("star", 5).mixing(0)  # node 0 is the hub
    plan = halo_plan(w, ((0,), (1, 2, 3, 4)))
    assert plan.rows[0][1] == (0,)  # one row for four receivers
    assert len(plan.pairs[0][1]) == 4  # but four fixed-point contributions
    assert plan.rows[1][0] == (1, 2, 3, 4)
