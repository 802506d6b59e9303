"""What every engine needs from a scenario: data, model, topology, schedule, and results.

An engine gets a ``Setup`` (built once per sweep value) and returns a
``RunResult``; the report and the CLI only ever see those two.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import topology
from p2pfl.datasets import FederatedData, load_federated
from p2pfl.engines.privacy import budget_for
from p2pfl.engines.secure import secagg_config_of
from p2pfl.errors import ConfigError
from p2pfl.models import build_model, flat_parameters
from p2pfl.privacy.budget import Budget
from p2pfl.scenario import Scenario
from p2pfl.training import LocalSchedule, schedule_from
from protocols.gossip import Neighbourhood
from protocols.secagg import dropout_tolerance
from protocols.wire import Encoding, GossipMessage, Payload, dense, frame_size

Progress = Callable[[int], None]
"""Called with the number of rounds completed so far."""


@dataclass
class Setup:
    scenario: Scenario
    data: FederatedData
    model: nn.Module
    initial: Tensor
    topo: topology.Topology
    schedule: LocalSchedule
    device: torch.device
    budget: Budget | None = None

    @property
    def n(self) -> int:
        return len(self.data.nodes)

    @property
    def dim(self) -> int:
        return int(self.initial.numel())

    def names(self) -> list[str]:
        return [f"n{i}" for i in range(self.n)]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no GPU")
    return torch.device(name)


def build_topology(scenario: Scenario, n: int) -> topology.Topology:
    t = scenario.topology
    params = {
        key: value for key, value in (("p", t.p), ("k", t.k), ("m", t.m)) if value is not None
    }
    return topology.build(
        t.kind,
        n,
        degree=t.degree,
        seed=scenario.seed if t.seed is None else t.seed,
        weights=t.weights,
        path=t.path,
        **params,
    )


def prepare(scenario: Scenario, data: FederatedData | None = None) -> Setup:
    """Load data, build the model and the topology; validate their combination."""
    d = scenario.data
    if data is None:
        data = load_federated(
            d.dataset,
            d.nodes,
            d.partition,
            alpha=d.alpha,
            classes_per_node=d.classes_per_node,
            test_fraction=d.test_fraction,
            max_train_samples=d.max_train_samples,
            max_test_samples=d.max_test_samples,
            seed=scenario.seed,
            data_dir=d.data_dir,
        )
    hidden = tuple(scenario.model.hidden) if scenario.model.hidden is not None else None
    model = build_model(
        scenario.model.name, data.input_shape, data.num_classes, hidden=hidden, seed=scenario.seed
    )
    topo = build_topology(scenario, len(data.nodes))
    mode = scenario.gossip.mode
    if mode != "async" and topo.directed and not doubly_stochastic(topo):
        raise ConfigError(
            f"topology {topo.kind!r} is directed and its weights are only column-stochastic: "
            "use gossip.mode = 'async' (push-sum)"
        )
    if mode == "choco" and topo.time_varying:
        raise ConfigError(
            f"gossip.mode 'choco' keeps public copies of fixed neighbours; topology "
            f"{topo.kind!r} changes every round (use sync or async)"
        )
    if scenario.secure.enabled:
        check_secure(scenario, topo)
    schedule = schedule_from(scenario.training)
    _check_opt_in(scenario, data)
    return Setup(
        scenario,
        data,
        model,
        flat_parameters(model),
        topo,
        schedule,
        pick_device(_device_for(scenario)),
        budget_for(scenario, data, topo, schedule),
    )


def _device_for(scenario: Scenario) -> str:
    """The device name asked for; ``auto`` is the CPU under DP-SGD (opacus trains one node's
    small model at a time, where a GPU only adds transfers), a GPU otherwise when present."""
    p = scenario.privacy
    if p.active and p.mechanism == "dp-sgd" and scenario.device == "auto":
        return "cpu"
    return scenario.device


def _check_opt_in(scenario: Scenario, data: FederatedData) -> None:
    sites = [nd.name for nd in data.nodes]
    unknown = [s for s in scenario.privacy.opt_in if s not in sites]
    if unknown:
        raise ConfigError(
            f"privacy.opt_in names {unknown}, which are not sites of this run ({', '.join(sites)})"
        )


def secure_tolerance(scenario: Scenario, topo: topology.Topology) -> dict[str, int]:
    """Per node, how many in-neighbours may drop out of a secure round, at worst over the steps.

    Refuses, naming the node and its degree, any node secure mode cannot serve
    at any step of the topology (up to 64 steps of a schedule): a single
    neighbour hides nothing, and a neighbourhood too large for the fixed-point
    range could overflow.
    """
    cfg = secagg_config_of(scenario)
    tolerance: dict[str, int] = {}
    for step in steps_to_check(topo):
        w = topo.mixing(step).tocsr()
        in_degree = np.diff(w.indptr) - (w.diagonal() != 0)
        degrees = {f"n{i}": int(d) for i, d in enumerate(in_degree)}
        for node, value in dropout_tolerance(cfg, degrees).items():
            tolerance[node] = min(value, tolerance.get(node, value))
    return tolerance


def steps_to_check(topo: topology.Topology, cap: int = 64) -> range:
    """The steps worth checking: one for a static graph, a schedule's period up to ``cap``."""
    return range(min(topo.period, cap) if topo.time_varying else 1)


def check_secure(scenario: Scenario, topo: topology.Topology) -> None:
    for node, r in scenario.secure.dropouts:
        if not 0 <= node < topo.n or not 0 <= r < scenario.training.rounds:
            raise ConfigError(
                f"secure.dropouts: [{node}, {r}] names no node (0..{topo.n - 1}) "
                f"or no round (0..{scenario.training.rounds - 1})"
            )
    secure_tolerance(scenario, topo)


def doubly_stochastic(topo: topology.Topology, tol: float = 1e-12) -> bool:
    """Whether every mixing matrix of the topology (each step of a schedule) is doubly stochastic.

    A directed graph with such weights (one-peer exponential) mixes exactly under
    D-PSGD, so ``sync`` accepts it; plain column-stochastic weights need push-sum.
    """
    for step in steps_to_check(topo):
        w = topo.mixing(step)
        rows, cols = np.asarray(w.sum(axis=1)), np.asarray(w.sum(axis=0))
        if np.abs(rows - 1).max() > tol or np.abs(cols - 1).max() > tol:
            return False
    return True


def neighbourhood_fn(
    topo: topology.Topology, names: list[str]
) -> Callable[[int], Callable[[int], Neighbourhood]]:
    """For node i, the function round -> its Neighbourhood, read off the mixing matrices."""

    def for_node(i: int) -> Callable[[int], Neighbourhood]:
        @functools.lru_cache(maxsize=8)
        def at(round: int) -> Neighbourhood:
            w = topo.mixing(round)
            row = w[[i], :].tocoo()
            col = w[:, [i]].tocoo()
            in_weights = {
                names[j]: float(v) for j, v in zip(row.col, row.data, strict=True) if j != i
            }
            out = {names[j]: float(v) for j, v in zip(col.row, col.data, strict=True) if j != i}
            return Neighbourhood(float(w[i, i]), in_weights, out)

        return at

    return for_node


def frame_bytes(
    dim: int, sender: str, round_number: int, compression: str = "none", **kw: Any
) -> int:
    """Size on the wire of one model message (header included), without building it.

    ``compression`` is ``none`` (a dense float32 model), ``quantize`` (``bits``) or
    ``topk`` (``fraction``), as a CHOCO message of that compressor would be.
    """
    if compression == "quantize":
        bits = int(kw["bits"])
        packed = np.broadcast_to(np.uint8(0), ((dim * bits + 7) // 8,))
        payload = Payload(Encoding.QUANTIZED, dim, packed, norm=1.0, bits=bits)
    elif compression == "topk":
        k = max(1, min(dim, round(float(kw["fraction"]) * dim)))
        values = np.broadcast_to(np.float32(0), (k,))
        indices = np.broadcast_to(np.uint32(0), (k,))
        payload = Payload(Encoding.TOPK, dim, values, indices=indices)
    else:
        payload = dense(np.broadcast_to(np.float32(0), (dim,)))
    return frame_size(GossipMessage(sender, round_number, payload))


@dataclass
class RoundRecord:
    round: int
    acc_mean: float | None
    acc_min: float | None
    acc_max: float | None
    loss_mean: float | None
    consensus: float
    bytes_per_node: float
    wall: float
    train_seconds: float | None = None  # local training this round, all nodes together


@dataclass
class RunResult:
    label: str
    engine: str
    rounds: list[RoundRecord]
    final_params: Tensor  # (n, D), node order
    node_names: list[str]
    site_names: list[str]
    wall_train: float = 0.0
    wall_mix: float = 0.0
    wall_eval: float = 0.0
    wall_total: float = 0.0
    stragglers: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def averaged(self) -> Tensor:
        return self.final_params.mean(dim=0)


def round_record(
    round_index: int,
    acc: Tensor | None,
    loss: Tensor | None,
    params: Tensor,
    bytes_per_node: float,
    wall: float,
    aggregate: tuple[float | None, float | None] | None = None,
    train_seconds: float | None = None,
) -> RoundRecord:
    """The record of round ``round_index`` (0-based): accuracy stats where evaluated.

    ``aggregate`` (private metrics): the federation's securely summed (accuracy, loss)
    replaces the per-node statistics, and no minimum or maximum is kept.
    """
    if aggregate is not None:
        return RoundRecord(
            round_index + 1,
            aggregate[0],
            None,
            None,
            aggregate[1],
            consensus_distance(params),
            bytes_per_node,
            wall,
            train_seconds,
        )
    return RoundRecord(
        round=round_index + 1,
        acc_mean=None if acc is None else float(acc.mean()),
        acc_min=None if acc is None else float(acc.min()),
        acc_max=None if acc is None else float(acc.max()),
        loss_mean=None if loss is None else float(loss.mean()),
        consensus=consensus_distance(params),
        bytes_per_node=bytes_per_node,
        wall=wall,
        train_seconds=train_seconds,
    )


def consensus_distance(params: Tensor, chunk: int = 16) -> float:
    """Root mean squared distance of the nodes' models to their average.

    Works through the rows in small chunks so that no (n, D) temporary is
    allocated; differences are taken before squaring, so a tiny distance is
    not lost to cancellation.
    """
    mean = params.mean(dim=0, keepdim=True)
    total = 0.0
    for a in range(0, params.shape[0], chunk):
        total += float(torch.linalg.vector_norm(params[a : a + chunk] - mean)) ** 2
    return math.sqrt(total / params.shape[0])
