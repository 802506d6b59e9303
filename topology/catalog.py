"""The catalogue of graph families: names, parameters, defaults, rules.

Kept free of numpy, scipy and networkx so that listing the families (the CLI's
``topology list``, argparse choices) costs no heavy import; ``families.build``
does the work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

WEIGHT_RULES: tuple[str, ...] = ("metropolis", "max-degree", "uniform")
"""Mixing-weight rules for undirected graphs (see ``topology.weights``)."""


@dataclass(frozen=True)
class Parameter:
    """A family parameter: ``default`` None means derived from n (see ``help``) or required."""

    name: str
    type: type
    default: Any
    help: str


@dataclass(frozen=True)
class FamilyInfo:
    """What a family is and takes; ``directed``/``time_varying`` describe the family,
    while a built Topology says what its instance is (a schedule with one step is static).

    ``aliases`` maps accepted alternative parameter names to the canonical ones.
    ``vertex_transitive`` families look the same from every node, so the
    analysis reads the diameter off a single BFS.
    """

    name: str
    description: str
    parameters: tuple[Parameter, ...] = ()
    directed: bool = False
    time_varying: bool = False
    random: bool = False
    nodes_rule: str = "at least 2"
    weights: str = "metropolis, max-degree or uniform"
    vertex_transitive: bool = False
    aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


_DEGREE = Parameter("degree", int, None, "neighbours per node (default min(4, n-1))")


def _info(*families: FamilyInfo) -> Mapping[str, FamilyInfo]:
    return MappingProxyType({f.name: f for f in families})


FAMILIES: Mapping[str, FamilyInfo] = _info(
    FamilyInfo("ring", "cycle: each node talks to its two neighbours", vertex_transitive=True),
    FamilyInfo("path", "line: a ring with one link cut"),
    FamilyInfo("star", "one hub linked to every node: the parameter-server shape, for reference"),
    FamilyInfo(
        "complete",
        "everyone talks to everyone: exact averaging in one step",
        vertex_transitive=True,
    ),
    FamilyInfo(
        "torus", "2-D grid with wrap-around", nodes_rule="a square m x m", vertex_transitive=True
    ),
    FamilyInfo(
        "hypercube",
        "nodes are bit strings, linked when one bit differs",
        nodes_rule="a power of two",
        vertex_transitive=True,
    ),
    FamilyInfo(
        "regular",
        "random d-regular graph, conditioned on connectivity",
        (_DEGREE,),
        random=True,
        nodes_rule="more than degree; nodes x degree even",
    ),
    FamilyInfo(
        "erdos-renyi",
        "G(n, p) conditioned on connectivity",
        (Parameter("p", float, None, "edge probability (default 2 ln(n)/n)"),),
        random=True,
    ),
    FamilyInfo(
        "watts-strogatz",
        "ring lattice with random rewiring (small world), connected",
        (
            Parameter(
                "degree", int, None, "even lattice degree (default 4, or less if n is small)"
            ),
            Parameter("p", float, 0.1, "rewiring probability"),
        ),
        random=True,
        aliases=MappingProxyType({"k": "degree"}),
    ),
    FamilyInfo(
        "barabasi-albert",
        "preferential attachment: scale-free, a few hubs",
        (Parameter("m", int, None, "edges from each new node (default min(2, n-1))"),),
        random=True,
    ),
    FamilyInfo(
        "exponential", "static exponential: node i links to i +- 2^k", vertex_transitive=True
    ),
    FamilyInfo(
        "file",
        "a graph read from an edge list, GraphML or TOML adjacency file",
        (Parameter("path", str, None, "the file (required)"),),
        nodes_rule="the file's node count",
    ),
    FamilyInfo(
        "exponential-directed",
        "node i sends to i + 2^k; column-stochastic (push-sum)",
        directed=True,
        vertex_transitive=True,
        weights="push-sum: 1/(1 + out-degree)",
    ),
    FamilyInfo(
        "one-peer-exponential",
        "at step t node i sends to i + 2^(t mod log2 n); exact after log2 n steps "
        "(Ying et al. 2021)",
        directed=True,
        time_varying=True,
        nodes_rule="a power of two",
        weights="fixed: 1/2 each",
    ),
    FamilyInfo(
        "base-k",
        "Base-(k+1) graph: at most k peers per step, exact average in finitely many "
        "steps for any n (Takezawa et al. 2023)",
        (Parameter("k", int, 1, "peers per node and step"),),
        time_varying=True,
        nodes_rule="more than k",
        weights="fixed by the construction",
        aliases=MappingProxyType({"degree": "k"}),
    ),
    FamilyInfo(
        "random-regular-per-round",
        "a fresh random d-regular graph every step",
        (_DEGREE,),
        time_varying=True,
        random=True,
        nodes_rule="more than degree; nodes x degree even",
    ),
)
