"""What every engine needs from a scenario: data, model, topology, schedule, and results.

An engine gets a ``Setup`` (built once per sweep value) and returns a
``RunResult``; the report and the CLI only ever see those two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import topology
from p2pfl.datasets import FederatedData
from p2pfl.errors import ConfigError
from p2pfl.models import build_model, flat_parameters, named_sizes
from p2pfl.privacy.budget import Budget
from p2pfl.scenario import Scenario, load_data, search_folders
from p2pfl.spec import (
    Graph,
    Plan,
    Rehearsal,
    federation_bytes,
    plan_of,
    privacy_budget,
    rehearsal_federation,
)
from p2pfl.training import LocalSchedule, schedule_from
from protocols.partial import Selection
from protocols.wire import Encoding, GossipMessage, Payload, dense, frame_size

Progress = Callable[[int], None]
"""Called with the number of rounds completed so far."""


@dataclass
class Setup:
    scenario: Scenario
    data: FederatedData
    model: nn.Module
    initial: Tensor
    graph: Graph
    schedule: LocalSchedule
    device: torch.device
    budget: Budget | None = None

    @property
    def n(self) -> int:
        return len(self.data.nodes)

    @property
    def dim(self) -> int:
        return int(self.initial.numel())

    @property
    def topo(self) -> topology.Topology:
        return self.graph.topo

    @property
    def randomness(self) -> Rehearsal:
        """Keys and seeds of a rehearsal: derived from the scenario seed."""
        return Rehearsal(self.scenario.seed)

    @property
    def federation(self) -> bytes:
        """The 32 bytes this rehearsal's masks are bound to."""
        return federation_bytes(rehearsal_federation(self.scenario.name))

    def names(self) -> list[str]:
        return list(self.graph.roster)

    @property
    def selection(self) -> Selection | None:
        """What each node gossips under partial sharing (``RunSpec.selection``); None: all."""
        return self.scenario.selection(named_sizes(self.model))

    @property
    def shared_dim(self) -> int:
        """Values a node sends per round: the whole model, or its shared part."""
        selection = self.selection
        return self.dim if selection is None else selection.shared_dim

    def plan(self) -> Plan:
        """The plan that deploys this rehearsal: its run spec, its data's shape, its size.

        ``PlanError`` where the daemons cannot run it (a mode they do not run, a graph file).
        """
        return plan_of(self.scenario, self.data.input_shape, self.data.num_classes, members=self.n)


def node_names(n: int) -> list[str]:
    return [f"n{i}" for i in range(n)]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no GPU")
    return torch.device(name)


def prepare(scenario: Scenario, data: FederatedData | None = None) -> Setup:
    """Load data, build the model and the graph; validate the spec at every step of the run."""
    if data is None:
        data = load_data(scenario)
    hidden = tuple(scenario.model.hidden) if scenario.model.hidden is not None else None
    model = build_model(
        scenario.model.name,
        data.input_shape,
        data.num_classes,
        hidden=hidden,
        seed=scenario.seed,
        kwargs=scenario.model.kwargs,
        search=search_folders(scenario),
    )
    graph = Graph.build(scenario, node_names(len(data.nodes)))
    _check_dropouts(scenario, graph.n)
    _check_opt_in(scenario, data)
    scenario.selection(named_sizes(model))  # a personal layer the model lacks: refused here
    sizes = [int(nd.x_train.shape[0]) for nd in data.nodes]
    return Setup(
        scenario,
        data,
        model,
        flat_parameters(model),
        graph,
        schedule_from(scenario.training),
        pick_device(_device_for(scenario)),
        privacy_budget(scenario, graph, sizes),
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


def _check_dropouts(scenario: Scenario, n: int) -> None:
    for node, r in scenario.dropouts.schedule:
        if not 0 <= node < n or not 0 <= r < scenario.training.rounds:
            raise ConfigError(
                f"dropouts.schedule: [{node}, {r}] names no node (0..{n - 1}) "
                f"or no round (0..{scenario.training.rounds - 1})"
            )


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
    members: list[str] | None = None  # the last round's roster, where [[events]] changed it

    @property
    def averaged(self) -> Tensor:
        """The mean of the final models of the last round's members (every node's by default).

        A node that left or was revoked keeps its model of its last round, and a joiner
        its start model until it joins: neither is part of the federation's result.
        """
        if self.members is None:
            return self.final_params.mean(dim=0)
        rows = [self.node_names.index(m) for m in self.members]
        return self.final_params[rows].mean(dim=0)


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
