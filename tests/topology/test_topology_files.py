"""Graph files: edge list, GraphML and TOML adjacency lists, renumbered 0..n-1."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

from topology import build, read_graph_file

EXAMPLES = Path(__file__).resolve().parents[2] / "simulations" / "graphs"


def test_edge_list_with_comments_commas_and_weights(tmp_path: Path) -> None:
    path = tmp_path / "g.txt"
    path.write_text("# a square with a diagonal\n1 2\n2,3\n3 4 0.5  # weight ignored\n4 1\n\n1 3\n")
    g = read_graph_file(path)
    assert g.labels == ("1", "2", "3", "4")  # numbered in numeric label order
    assert g.edges.tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [2, 3]]


def test_numeric_labels_sort_numerically(tmp_path: Path) -> None:
    path = tmp_path / "g.edges"
    path.write_text("9 10\n10 2\n")
    assert read_graph_file(path).labels == ("2", "9", "10")


def test_self_loops_and_repeats_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "g.edges"
    path.write_text("0 1\n1 0\n1 1\n1 2\n")
    assert read_graph_file(path).edges.tolist() == [[0, 1], [1, 2]]


def test_toml_adjacency_is_undirected(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[adjacency]\nlab = ["clinic", 3]\nclinic = ["hospital"]\n')
    g = read_graph_file(path)
    assert g.labels == ("3", "clinic", "hospital", "lab")
    assert g.n == 4 and len(g.edges) == 3


def test_graphml_directed_becomes_undirected(tmp_path: Path) -> None:
    path = tmp_path / "g.graphml"
    nx.write_graphml(nx.DiGraph([("a", "b"), ("b", "c"), ("c", "a")]), path)
    g = read_graph_file(path)
    assert g.labels == ("a", "b", "c") and len(g.edges) == 3


@pytest.mark.parametrize(
    ("name", "n", "edges"),
    [("hospitals.toml", 8, 11), ("petersen.edgelist", 10, 15), ("grid-3x4.graphml", 12, 17)],
)
def test_example_files(name: str, n: int, edges: int) -> None:
    g = read_graph_file(EXAMPLES / name)
    assert (g.n, len(g.edges)) == (n, edges)
    topo = build("file", n, path=EXAMPLES / name)
    assert nx.is_connected(topo.graph())
