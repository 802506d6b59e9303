"""The named families and ``build``: one entry point from a name and parameters to a Topology.

Every family takes the node count ``n`` and a ``seed`` (used only by random
families); its own parameters are declared with their defaults in
``topology.catalog.FAMILIES``, so the CLI lists them and ``build`` rejects, by
name, any parameter a family does not take (a typo in a scenario file must not
silently do nothing).
``None`` means "not given" everywhere, so callers can pass every optional
field of a configuration straight through.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from os import PathLike
from typing import Any

import numpy as np
import scipy.sparse as sp

from topology import random_graphs as rg
from topology import static
from topology.catalog import FAMILIES, WEIGHT_RULES, FamilyInfo, Parameter
from topology.core import APERIODIC, Topology
from topology.errors import TopologyError
from topology.files import read_graph_file
from topology.schedules import base_schedule
from topology.weights import Edges, push_sum_weights, symmetric_weights


def build(
    kind: str,
    n: int,
    *,
    degree: int | None = None,
    seed: int = 0,
    weights: str = "metropolis",
    path: str | PathLike[str] | None = None,
    strict: bool = True,
    **params: Any,
) -> Topology:
    """Build the topology ``kind`` on ``n`` nodes; bad input raises TopologyError.

    ``weights`` picks the rule of undirected static graphs and of the random
    per-round graphs; directed graphs always use push-sum shares and the
    finite-time schedules their own weights (``Topology.weights`` says which).

    A parameter the family does not take is an error, unless ``strict`` is
    False and some other family takes it: then it is dropped, which lets one
    configuration sweep several families (``degree = 4`` for the regular graph
    of a sweep that also has a ring). A name no family takes is always an error.
    """
    info = FAMILIES.get(kind)
    if info is None:
        raise TopologyError("kind", f"unknown family {kind!r}; choose from {', '.join(FAMILIES)}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
        raise TopologyError("nodes", f"must be an integer of at least 2, not {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise TopologyError("seed", f"must be a non-negative integer, not {seed!r}")
    if weights not in WEIGHT_RULES:
        raise TopologyError("weights", f"must be one of {', '.join(WEIGHT_RULES)}, not {weights!r}")
    given = {"degree": degree, "path": path, **params}
    resolved = _resolve(info, {k: v for k, v in given.items() if v is not None}, strict)
    if info.random:
        resolved["seed"] = int(seed)  # part of what names a random graph
    return _BUILDERS[kind](int(n), resolved, int(seed), weights)


def _resolve(info: FamilyInfo, given: dict[str, Any], strict: bool) -> dict[str, Any]:
    declared = {p.name: p for p in info.parameters}
    out: dict[str, Any] = {}
    for name, value in given.items():
        canonical = info.aliases.get(name, name)
        if canonical not in declared and not strict and name in _KNOWN:
            continue
        if canonical not in declared:
            takes = ", ".join(declared) or "no parameters besides nodes and seed"
            raise TopologyError(name, f"is not a parameter of {info.name} (it takes {takes})")
        if canonical in out and out[canonical] != value:
            raise TopologyError(
                name, f"given twice for {info.name}, as {out[canonical]!r} and {value!r}"
            )
        out[canonical] = _typed(declared[canonical], name, value)
    for p in info.parameters:
        out.setdefault(p.name, p.default)
    return out


_KNOWN = frozenset(
    name for f in FAMILIES.values() for name in (*(p.name for p in f.parameters), *f.aliases)
)


def _typed(p: Parameter, name: str, value: Any) -> Any:
    if p.type is int and not isinstance(value, bool) and isinstance(value, int | np.integer):
        return int(value)
    if (
        p.type is float
        and not isinstance(value, bool)
        and isinstance(value, int | float | np.number)
    ):
        return float(value)
    if p.type is str and isinstance(value, str | PathLike):
        return str(value)
    raise TopologyError(
        name, f"must be {'a number' if p.type is float else p.type.__name__}, not {value!r}"
    )


def _default_degree(n: int, d: int | None) -> int:
    return min(4, n - 1) if d is None else d


def _regular(n: int, params: dict[str, Any], seed: int, weights: str) -> Topology:
    params["degree"] = d = _default_degree(n, params["degree"])
    w = symmetric_weights(n, rg.connected_regular(n, d, seed), weights)
    return Topology.static("regular", w, weights=weights, params=params)


def _erdos_renyi(n: int, params: dict[str, Any], seed: int, weights: str) -> Topology:
    if params["p"] is None:
        params["p"] = rg.default_erdos_renyi_p(n)
    w = symmetric_weights(n, rg.erdos_renyi(n, params["p"], seed), weights)
    return Topology.static("erdos-renyi", w, weights=weights, params=params)


def _watts_strogatz(n: int, params: dict[str, Any], seed: int, weights: str) -> Topology:
    if params["degree"] is None:
        params["degree"] = 4 if n > 4 else 2
    edges = rg.watts_strogatz(n, params["degree"], params["p"], seed)
    w = symmetric_weights(n, edges, weights)
    return Topology.static("watts-strogatz", w, weights=weights, params=params)


def _barabasi_albert(n: int, params: dict[str, Any], seed: int, weights: str) -> Topology:
    if params["m"] is None:
        params["m"] = min(2, n - 1)
    w = symmetric_weights(n, rg.barabasi_albert(n, params["m"], seed), weights)
    return Topology.static("barabasi-albert", w, weights=weights, params=params)


def _file(n: int, params: dict[str, Any], seed: int, weights: str) -> Topology:
    if params["path"] is None:
        raise TopologyError("path", "the file family needs the path of a graph file")
    graph = read_graph_file(params["path"])
    if graph.n != n:
        raise TopologyError("nodes", f"{params['path']} describes {graph.n} nodes, not {n}")
    params["labels"] = graph.labels
    w = symmetric_weights(n, graph.edges, weights)
    return Topology.static("file", w, weights=weights, params=params)


def _exponential_directed(n: int, params: dict[str, Any], seed: int, weights: str) -> Topology:
    w = push_sum_weights(n, static.exponential_arcs(n))
    return Topology.static(
        "exponential-directed", w, directed=True, weights="push-sum", params=params
    )


def _one_peer(n: int, params: dict[str, Any], seed: int, weights: str) -> Topology:
    tau = static.check_one_peer(n)

    def at(step: int) -> sp.csr_array:
        return push_sum_weights(n, static.one_peer_arcs(n, step))

    return Topology.create(
        "one-peer-exponential", n, at, period=tau, directed=True, weights="schedule", params=params
    )


def _base_k(n: int, params: dict[str, Any], seed: int, weights: str) -> Topology:
    k = params["k"]
    if k < 1:
        raise TopologyError("k", f"must be at least 1 (peers per step), not {k}")
    if k >= n:
        raise TopologyError("k", f"must be less than the number of nodes ({n}), not {k}")
    matrices = base_schedule(n, k)
    return Topology.create(
        "base-k", n, matrices.__getitem__, period=len(matrices), weights="schedule", params=params
    )


def _random_per_round(n: int, params: dict[str, Any], seed: int, weights: str) -> Topology:
    params["degree"] = d = _default_degree(n, params["degree"])
    rg.check_regular(n, d, family="random-regular-per-round")

    def at(step: int) -> sp.csr_array:
        rng = np.random.default_rng([seed, step])
        return symmetric_weights(n, rg.regular_edges(n, d, rng), weights)

    return Topology.create(
        "random-regular-per-round", n, at, period=APERIODIC, weights=weights, params=params
    )


def _static_family(kind: str, edge_fn: Callable[[int], Edges]) -> Callable[..., Topology]:
    def make(n: int, params: dict[str, Any], seed: int, weights: str) -> Topology:
        w = symmetric_weights(n, edge_fn(n), weights)
        return Topology.static(kind, w, weights=weights, params=params)

    return make


_BUILDERS: Mapping[str, Callable[[int, dict[str, Any], int, str], Topology]] = {
    "ring": _static_family("ring", static.ring),
    "path": _static_family("path", static.path),
    "star": _static_family("star", static.star),
    "complete": _static_family("complete", static.complete),
    "torus": _static_family("torus", static.torus),
    "hypercube": _static_family("hypercube", static.hypercube),
    "exponential": _static_family("exponential", static.exponential),
    "regular": _regular,
    "erdos-renyi": _erdos_renyi,
    "watts-strogatz": _watts_strogatz,
    "barabasi-albert": _barabasi_albert,
    "file": _file,
    "exponential-directed": _exponential_directed,
    "one-peer-exponential": _one_peer,
    "base-k": _base_k,
    "random-regular-per-round": _random_per_round,
}
