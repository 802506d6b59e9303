"""Bad parameters raise TopologyError naming the parameter and stating the rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from topology import FAMILIES, TopologyError, build


def fails(parameter: str, kind: str, n: int, **kw: object) -> str:
    with pytest.raises(TopologyError) as err:
        build(kind, n, **kw)  # type: ignore[arg-type]
    assert err.value.parameter == parameter, str(err.value)
    assert str(err.value).startswith(f"{parameter}: ")
    return err.value.rule


@pytest.mark.parametrize("kind", sorted(FAMILIES))
@pytest.mark.parametrize("n", [1, 0, -3])
def test_fewer_than_two_nodes(kind: str, n: int) -> None:
    assert "at least 2" in fails("nodes", kind, n)


@pytest.mark.parametrize("n", [2.0, "8", True])
def test_nodes_must_be_an_integer(n: object) -> None:
    fails("nodes", "ring", n)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["regular", "random-regular-per-round"])
def test_degree_at_least_n(kind: str) -> None:
    assert "less than the number of nodes" in fails("degree", kind, 6, degree=6)
    fails("degree", kind, 6, degree=9)


@pytest.mark.parametrize("kind", ["regular", "random-regular-per-round"])
def test_n_times_d_odd(kind: str) -> None:
    assert "even" in fails("degree", kind, 7, degree=3)


def test_regular_needs_degree_three_to_be_connected() -> None:
    assert "at least 3" in fails("degree", "regular", 10, degree=2)
    assert build("random-regular-per-round", 10, degree=1).mixing(0).nnz == 20


def test_base_k_k_rules() -> None:
    fails("k", "base-k", 6, k=6)
    fails("k", "base-k", 6, k=0)


@pytest.mark.parametrize("n", [3, 6, 12, 100])
def test_hypercube_needs_power_of_two(n: int) -> None:
    assert "power of two" in fails("nodes", "hypercube", n)


@pytest.mark.parametrize("n", [3, 12, 24])
def test_one_peer_needs_power_of_two(n: int) -> None:
    assert "power of two" in fails("nodes", "one-peer-exponential", n)


def test_torus_needs_a_square() -> None:
    assert "try 9 or 16" in fails("nodes", "torus", 10)


def test_family_parameter_rules() -> None:
    fails("p", "erdos-renyi", 10, p=0.0)
    fails("p", "erdos-renyi", 10, p=1.5)
    assert "disconnected" in fails("p", "erdos-renyi", 60, p=0.001)
    fails("degree", "watts-strogatz", 10, degree=3)
    fails("degree", "watts-strogatz", 10, degree=10)
    fails("p", "watts-strogatz", 10, p=-0.1)
    fails("m", "barabasi-albert", 5, m=5)
    fails("m", "barabasi-albert", 5, m=0)


def test_unknown_names() -> None:
    assert "ring" in fails("kind", "donut", 8)
    assert "metropolis" in fails("weights", "ring", 8, weights="laplacian")
    assert "not a parameter of ring" in fails("degree", "ring", 8, degree=2)
    fails("q", "erdos-renyi", 8, q=0.5)
    fails("degree", "regular", 8, degree=2.5)
    fails("seed", "regular", 8, seed=-1)


def test_bad_step_and_node() -> None:
    topo = build("ring", 5)
    with pytest.raises(TopologyError) as err:
        topo.mixing(-1)
    assert err.value.parameter == "step"
    with pytest.raises(TopologyError) as err:
        topo.in_neighbours(5)
    assert err.value.parameter == "node"


def test_file_family_needs_a_path() -> None:
    fails("path", "file", 4)


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in fails("path", "file", 4, path=tmp_path / "absent.txt")


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("bad.edgelist", "0 1\n1 2 3 4\n", "line 2"),
        ("bad.toml", "[adjacency\n0 = [1]", "not valid TOML"),
        ("extra.toml", "[adjacency]\n0 = [1]\n[nodes]\nx = 1\n", "unknown key 'nodes'"),
        ("shape.toml", "[adjacency]\n0 = 1\n", "must be a list"),
        ("notable.toml", "adjacency = 3\n", "[adjacency] table"),
        ("bad.graphml", "<graphml><graph>", "not valid GraphML"),
        ("tiny.edgelist", "0 0\n", "at least 2"),
        ("binary.txt", b"\xff\xfe\x00", "UTF-8"),
    ],
)
def test_files_that_do_not_parse(
    tmp_path: Path, name: str, content: str | bytes, says: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert says in fails("path", "file", 4, path=path)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("split.edgelist", "0 1\n2 3\n"),
        ("split.toml", '[adjacency]\na = ["b"]\nc = ["d"]\n'),
    ],
)
def test_disconnected_files(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    assert "disconnected graph (2 components)" in fails("path", "file", 4, path=path)


def test_file_node_count_must_match(tmp_path: Path) -> None:
    path = tmp_path / "g.edgelist"
    path.write_text("0 1\n1 2\n")
    assert "3 nodes" in fails("nodes", "file", 5, path=path)
