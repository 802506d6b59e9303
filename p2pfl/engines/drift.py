"""Drift in the simulation engines: inject what ``[drift] inject`` schedules, watch every node.

Each node gets a ``p2pfl.drift.DriftMonitor`` built from its training data before any
injection (the reference). At the start of a round the scheduled injections replace the
node's training data for good; after mixing, the node's averaged model is evaluated on its
local data and the monitor decides. Events are kept with the node's index; the report names
the site only where ``privacy.opt_in`` allows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from p2pfl.drift import DriftMonitor, inject_drift
from p2pfl.training import derived_seed, evaluate

if TYPE_CHECKING:
    from p2pfl.engines.common import Setup

Member = tuple[Any, int, int]
"""(trainer, position of the node in that trainer's stack, node index)."""


class DriftWatch:
    def __init__(self, setup: Setup, members: Sequence[Member]) -> None:
        cfg = setup.scenario.drift
        rounds = setup.scenario.training.rounds
        cfg.check_run(setup.n, rounds)
        self.setup, self.cfg, self.members = setup, cfg, list(members)
        self.events: list[dict[str, Any]] = []
        self.monitors: list[DriftMonitor | None] = []
        for trainer, position, node in self.members:
            if not cfg.enabled:
                self.monitors.append(None)
                continue
            x, y = trainer.node_data(position)
            gen = np.random.default_rng([setup.scenario.seed, node, 11])
            self.monitors.append(DriftMonitor(cfg, x, y, rounds=rounds, generator=gen))

    def inject(self, index: int, round: int) -> None:
        """Apply the injections scheduled for this member's node at ``round``."""
        trainer, position, node = self.members[index]
        for inj in self.cfg.injections_at(node, round):
            x, y = trainer.node_data(position)
            gen = torch.Generator().manual_seed(
                derived_seed(self.setup.scenario.seed, node, round, 13)
            )
            new_x, new_y = inject_drift(
                x.cpu(),
                y.cpu(),
                inj.kind,
                inj.magnitude,
                gen,
                n_classes=self.setup.data.num_classes,
            )
            trainer.replace_node_data(position, new_x.to(x.device), new_y.to(y.device))

    def observe(self, index: int, round: int, row: Tensor) -> None:
        """Test this member's node after mixing: its data, and its averaged model's loss."""
        monitor = self.monitors[index]
        if monitor is None:
            return
        trainer, position, node = self.members[index]
        x, y = trainer.node_data(position)
        _, loss = evaluate(self.setup.model, row.reshape(1, -1), x, y)
        for event in monitor.observe(round, x, y, float(loss[0])):
            self.events.append({"node": node, **event.to_record()})

    def report(self, site_names: Sequence[str], opt_in: Sequence[str]) -> dict[str, Any] | None:
        """Events in round order; a site is named only if it opted in."""
        if not self.cfg.enabled and not self.cfg.inject:
            return None
        events = [
            public_event(e, site_names[e["node"]], opt_in)
            for e in sorted(self.events, key=lambda e: (e["round"], e["node"]))
        ]
        injected = [
            {
                "site": site_names[i.node] if site_names[i.node] in opt_in else None,
                "round": i.round,
                "kind": i.kind,
                "magnitude": i.magnitude,
            }
            for i in self.cfg.injections()
        ]
        return {"events": events, "injected": injected}


def watch(setup: Setup, members: Sequence[Member]) -> DriftWatch | None:
    cfg = setup.scenario.drift
    return DriftWatch(setup, members) if cfg.enabled or cfg.inject else None


def drift_summary(drift: DriftWatch | None, setup: Setup) -> dict[str, Any]:
    """The ``extra`` entry of a run: its drift report, if drift was watched or injected."""
    if drift is None:
        return {}
    sites = [nd.name for nd in setup.data.nodes]
    return {"drift": drift.report(sites, setup.scenario.privacy.opt_in)}


EVENT_FIELDS = ("round", "detector", "statistic", "value", "p_value", "threshold", "feature")


def public_event(record: Mapping[str, Any], site: str, opt_in: Sequence[str]) -> dict[str, Any]:
    """A drift event as reports show it: the site named only if it opted in."""
    return {"site": site if site in opt_in else None, **{k: record.get(k) for k in EVENT_FIELDS}}
