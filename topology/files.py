"""Graphs read from files: an edge list, GraphML, or a TOML adjacency list.

The format follows the suffix: ``.graphml``/``.xml`` is GraphML, ``.toml`` is
an adjacency list, anything else is an edge list. Every format describes an
undirected graph (GraphML arcs lose their direction); self-loops and repeated
edges are dropped, since every node keeps its own model anyway and mixing
weights come from the weight rule, not from the file.

Edge list: one edge per line, ``u v`` (whitespace or comma separated; a third
column, such as a weight, is ignored), ``#`` starts a comment.

TOML adjacency list (the only accepted top-level table is ``adjacency``)::

    [adjacency]
    hospital-a = ["hospital-b", "lab-c"]
    hospital-b = ["lab-c"]

Nodes are numbered 0..n-1 in sorted label order (numerically when every label
is an integer), and ``labels[i]`` gives the label of node ``i``. Any file that
cannot be read, does not parse, has fewer than two nodes or is disconnected
raises TopologyError naming ``path``.
"""

from __future__ import annotations

import re
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from topology.errors import TopologyError
from topology.random_graphs import components
from topology.weights import Edges, canonical_edges

_INTEGER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class GraphFile:
    """A graph read from a file, renumbered 0..n-1."""

    n: int
    edges: Edges
    labels: tuple[str, ...]


def read_graph_file(path: str | Path) -> GraphFile:
    """Read, renumber and validate a graph file (see the module docstring)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise TopologyError("path", f"no such file: {p}") from None
    except OSError as exc:
        raise TopologyError("path", f"cannot read {p}: {exc.strerror or exc}") from None
    suffix = p.suffix.lower()
    if suffix in (".graphml", ".xml"):
        labels, pairs = _graphml(p, raw)
    elif suffix == ".toml":
        labels, pairs = _toml(p, raw)
    else:
        labels, pairs = _edge_list(p, raw)
    return _validated(p, labels, pairs)


def _text(p: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TopologyError("path", f"{p} is not UTF-8 text ({exc.reason})") from None


def _edge_list(p: Path, raw: bytes) -> tuple[set[str], list[tuple[str, str]]]:
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(_text(p, raw).splitlines(), start=1):
        fields = line.split("#", 1)[0].replace(",", " ").split()
        if not fields:
            continue
        if len(fields) not in (2, 3):
            raise TopologyError(
                "path", f"{p}, line {number}: expected an edge 'u v', got {line.strip()!r}"
            )
        pairs.append((fields[0], fields[1]))
    labels = {label for pair in pairs for label in pair}
    return labels, pairs


def _toml(p: Path, raw: bytes) -> tuple[set[str], list[tuple[str, str]]]:
    try:
        doc = tomllib.loads(_text(p, raw))
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError("path", f"{p} is not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"adjacency"})
    if unknown:
        raise TopologyError(
            "path", f"{p}: unknown key {unknown[0]!r} (a graph file has one table, [adjacency])"
        )
    table = doc.get("adjacency")
    if not isinstance(table, dict):
        raise TopologyError("path", f"{p}: needs an [adjacency] table mapping nodes to lists")
    labels: set[str] = set()
    pairs: list[tuple[str, str]] = []
    for node, neighbours in table.items():
        if not isinstance(neighbours, list) or not all(
            isinstance(x, str | int) and not isinstance(x, bool) for x in neighbours
        ):
            raise TopologyError(
                "path", f"{p}: adjacency.{node} must be a list of node names or numbers"
            )
        labels.add(str(node))
        for other in neighbours:
            labels.add(str(other))
            pairs.append((str(node), str(other)))
    return labels, pairs


def _graphml(p: Path, raw: bytes) -> tuple[set[str], list[tuple[str, str]]]:
    import networkx as nx

    try:
        g = nx.parse_graphml(_text(p, raw))
    except (ET.ParseError, nx.NetworkXError, ValueError, KeyError, TypeError) as exc:
        raise TopologyError("path", f"{p} is not valid GraphML: {exc}") from None
    labels = {str(node) for node in g.nodes}
    pairs = [(str(u), str(v)) for u, v in g.edges()]
    return labels, pairs


def _sorted_labels(labels: set[str]) -> list[str]:
    if all(_INTEGER.fullmatch(label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _validated(p: Path, labels: set[str], pairs: list[tuple[str, str]]) -> GraphFile:
    ordered = _sorted_labels(labels)
    n = len(ordered)
    if n < 2:
        raise TopologyError("path", f"{p} describes {n} node(s); a graph needs at least 2")
    index = {label: i for i, label in enumerate(ordered)}
    array = np.array([(index[u], index[v]) for u, v in pairs], dtype=np.int64).reshape(-1, 2)
    edges = canonical_edges(n, array)
    parts = components(n, edges)
    if parts != 1:
        raise TopologyError(
            "path",
            f"{p} describes a disconnected graph ({parts} components); every node must "
            f"reach every other",
        )
    return GraphFile(n=n, edges=edges, labels=tuple(ordered))
