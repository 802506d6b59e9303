"""Epochs of a rehearsal: the graph, cores and start models of each roster (``[[events]]``).

``protocols.membership.Timeline`` says who is a member of each epoch and who can
reach whom; this module turns an epoch into what the protocol engine runs.
Each group of an epoch (the whole roster, or one side of a partition) gets
the scenario's topology built over its own members, as each side's nodes
recompute it from their view of the ledger; a group of one trains alone. All
graphs are built, and so validated, before training starts: a partition that
leaves a secure group too small to hide a model is refused then, not in round 40.

A member catching up (a joiner, or a member back from absence) starts the
epoch from the mean of its established neighbours' models at the end of the
round before (those that were active in the previous epoch); with none, the
mean of its group's established members; a daemon checks those models
against the hashes its neighbours record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from p2pfl.errors import ConfigError
from p2pfl.events import timeline
from p2pfl.scenario import Scenario
from p2pfl.spec.graph import Graph
from protocols.membership import Epoch, Timeline


@dataclass(frozen=True)
class EpochGraphs:
    """Each member's graph in one epoch: ``None`` for a member alone in its group."""

    epoch: Epoch
    graph_of: dict[str, Graph | None]


def plan_epochs(sc: Scenario, whole: Graph) -> tuple[Timeline, list[EpochGraphs]]:
    """The timeline of ``sc``'s events over ``whole``'s roster, every epoch's graphs built."""
    names = list(whole.roster)
    line = timeline(sc.events, names, sc.training.rounds)
    epochs = []
    for epoch in line.epochs:
        graph_of: dict[str, Graph | None] = {}
        for group in epoch.groups:
            graph = _group_graph(sc, whole, epoch, group)
            graph_of.update({m: graph for m in group})
        epochs.append(EpochGraphs(epoch, graph_of))
    return line, epochs


def _group_graph(sc: Scenario, whole: Graph, epoch: Epoch, group: tuple[str, ...]) -> Graph | None:
    if len(group) == 1:
        return None
    if group == whole.roster:
        return whole
    try:
        return Graph.build(sc, group)
    except ConfigError as exc:
        raise ConfigError(
            f"[[events]]: from round {epoch.start}, the group {', '.join(group)} "
            f"cannot run the plan on its own: {exc}"
        ) from None


def start_models(
    line: Timeline, epoch: EpochGraphs, last: Tensor, index: dict[str, int]
) -> dict[str, Tensor]:
    """The start model of each member catching up in ``epoch``; ``last``: every node's row."""
    established = set(epoch.epoch.active) - line.catching_up(epoch.epoch)
    models: dict[str, Tensor] = {}
    for member in sorted(line.catching_up(epoch.epoch), key=index.__getitem__):
        graph = epoch.graph_of[member]
        group = epoch.epoch.group_of(member)
        peers: list[str] = []
        if graph is not None:
            hood = graph.neighbourhood(member, epoch.epoch.start)
            peers = [p for p in hood.in_weights if p in established]
        if not peers:
            peers = [p for p in group if p in established]
        if peers:
            rows = torch.stack([last[index[p]] for p in peers])
            models[member] = rows.mean(dim=0)
    return models


def epochs_summary(line: Timeline | None, late: int) -> dict[str, Any]:
    """What a run's report says of its epochs (nothing for a run without events)."""
    if line is None or len(line.epochs) == 1:
        return {}
    return {
        "epochs": [
            {"start": e.start, "members": list(e.members), "absent": sorted(e.absent)}
            for e in line.epochs
        ],
        "late_frames": late,
    }
