"""The protocol engine: every node is a real gossip core exchanging encoded bytes.

A deterministic scheduler drives the cores on a virtual clock. Events sit in a
heap ordered by (virtual time, sequence number), so a run is the same for a
seed whatever the machine. A node's local training takes
``steps * clock.step_time / speed`` virtual seconds (and whatever real time it
takes); a message takes ``clock.latency + bytes / clock.bandwidth``. Nothing
sleeps. Each message is encoded to bytes by the sender and decoded by the
receiver, exactly as over a socket.

Round metrics are taken when every node has finished that round: nodes finish
a round at different virtual times, so each node's model is copied into the
round's slot as it completes, and the slot is evaluated once full.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch
from torch import Tensor

from p2pfl.engines.attack import apply_attack, attack_summary, check_attack
from p2pfl.engines.common import (
    Progress,
    RoundRecord,
    RunResult,
    Setup,
    round_record,
)
from p2pfl.engines.drift import DriftWatch, drift_summary, watch
from p2pfl.engines.epochs import EpochGraphs, epochs_summary, plan_epochs, start_models
from p2pfl.engines.privacy import (
    DeltaNoise,
    delta_noise,
    make_trainer,
    masked_summary,
    norm_summary,
    site_metrics,
)
from p2pfl.errors import ConfigError
from p2pfl.spec.cores import build_core
from p2pfl.spec.graph import Graph
from p2pfl.training import evaluate
from protocols.gossip import PushSumGossip, RoundMixed, Straggler
from protocols.membership import Epoch, Timeline
from protocols.rounds import GossipRoundCore, RoundCore, RoundEvent, RoundOutput
from protocols.secagg import Abandoned

log = logging.getLogger(__name__)


@dataclass
class _Node:
    index: int
    name: str
    core: RoundCore | None  # None: alone in its group, or not a member of the current epoch
    trainer: Any  # StackedTrainer, or DpSgdTrainer under DP-SGD
    params: Tensor  # (1, D)
    speed: float
    noise: DeltaNoise | None = None
    attacker: bool = False  # sends ``[attack]``'s model instead of its trained one
    round: int = 0
    epoch: int = 0
    next_poll: float | None = None
    sent_bytes: dict[int, int] = field(default_factory=dict)


@dataclass
class _Slot:
    params: Tensor
    filled: int = 0
    sent: int = 0


def make_core(
    setup: Setup, i: int, names: list[str], graph: Graph | None = None, start_at: int = 0
) -> RoundCore:
    """Node ``i``'s round core: the daemon's (``p2pfl.spec.cores``), with a rehearsal's keys.

    ``graph`` (default the run's) and ``names`` (its roster): an epoch's, from round
    ``start_at`` (``p2pfl.engines.epochs``).

    Keys and self-mask seeds are derived from the scenario seed, so a run is
    reproducible; a dropout declaration goes straight from receiver to holders (a
    daemon's core holds it until the ledger has it); a node scheduled to drop out
    of round r deals its shares, then vanishes for that round.
    """
    sc = setup.scenario
    rehearsal = setup.randomness
    graph = setup.graph if graph is None else graph
    me = setup.graph.roster[i]
    return build_core(
        sc,
        graph,
        me,
        dim=setup.dim,
        federation=setup.federation,
        randomness=rehearsal,
        keys=rehearsal.key_ring(me, names) if sc.secure.enabled else None,
        drop_rounds=frozenset(r for node, r in sc.dropouts.schedule if node == i),
        selection=setup.selection,
        start_at=start_at,
    )


class _Kind(Enum):
    """What a scheduled event does to a node (``_Run.handlers``)."""

    TRAIN = "train"  # begin a round and train locally
    PUBLISH = "publish"  # training is over: start the round with the trained model
    DELIVER = "deliver"  # a frame reaches its receiver
    POLL = "poll"  # a core's deadline


class _Scheduler:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Kind, Any]] = []
        self._seq = itertools.count()

    def at(self, when: float, kind: _Kind, payload: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, payload))

    def pop(self) -> tuple[float, _Kind, Any] | None:
        if not self._heap:
            return None
        when, _, kind, payload = heapq.heappop(self._heap)
        return when, kind, payload


def run(setup: Setup, label: str, progress: Progress | None = None) -> RunResult:
    sc = setup.scenario
    names = setup.names()
    speeds = list(sc.clock.speeds) or [1.0] * setup.n
    if len(speeds) != setup.n or any(s <= 0 for s in speeds):
        raise ConfigError(f"clock.speeds needs {setup.n} positive numbers, got {speeds}")
    check_attack(setup)
    line, epochs = plan_epochs(sc, setup.graph)
    first = epochs[0]
    nodes = [
        _Node(
            i,
            names[i],
            _epoch_core(setup, i, first, 0),
            make_trainer(setup, [i]),
            setup.initial.clone().unsqueeze(0),
            speeds[i],
            delta_noise(setup, [i]),
            i in sc.attack.nodes,
        )
        for i in range(setup.n)
    ]
    by_name = {node.name: node for node in nodes}
    engine = _Run(setup, nodes, by_name, progress)
    engine.line, engine.epochs = line, epochs
    engine.drift = watch(setup, [(node.trainer, 0, node.index) for node in nodes])
    return engine.execute(label)


def _epoch_core(setup: Setup, i: int, epoch: EpochGraphs, start: int) -> RoundCore | None:
    """Node ``i``'s core in ``epoch``; ``None`` when it is no member or alone in its group."""
    graph = epoch.graph_of.get(setup.graph.roster[i])
    if graph is None:
        return None
    return make_core(setup, i, list(graph.roster), graph, start)


class _Run:
    def __init__(
        self, setup: Setup, nodes: list[_Node], by_name: dict[str, _Node], progress: Progress | None
    ) -> None:
        self.setup = setup
        self.sc = setup.scenario
        self.nodes = nodes
        self.by_name = by_name
        self.progress = progress
        self.clock = _Scheduler()
        self.slots: dict[int, _Slot] = {}
        self.records: list[RoundRecord] = []
        self.stragglers = 0
        self.abandoned = 0
        self.t_train = self.t_eval = 0.0
        self.last_wall = 0.0
        self.now = 0.0
        self.finished_at = 0.0  # virtual time of the last round completed by any node
        self.drift: DriftWatch | None = None
        self.train_by_round: dict[int, float] = {}
        self.line: Timeline | None = None
        self.epochs: list[EpochGraphs] = []
        self.late = 0  # frames of an epoch that had ended when they arrived
        self.handlers: dict[_Kind, Callable[[float, Any], None]] = {
            _Kind.TRAIN: self._on_train,
            _Kind.PUBLISH: self._on_publish,
            _Kind.DELIVER: self._on_deliver,
            _Kind.POLL: self._on_poll,
        }

    def execute(self, label: str) -> RunResult:
        start = time.perf_counter()
        self.last_wall = start
        for name in self._epoch(0).members:
            self.clock.at(0.0, _Kind.TRAIN, self.by_name[name].index)
        while (item := self.clock.pop()) is not None:
            self.now, kind, payload = item
            self.handlers[kind](self.now, payload)
        unfinished = [
            n.name for n in self.nodes if self._member(n) and n.round < self.sc.training.rounds
        ]
        if unfinished:
            raise ConfigError(
                f"nodes {unfinished} never finished their rounds: a neighbour stopped sending; "
                "set gossip.round_timeout to let rounds close over stragglers"
            )
        self._settle()
        final = torch.cat([n.params for n in self.nodes])
        total = time.perf_counter() - start
        return RunResult(
            label,
            "protocol",
            self.records,
            final,
            [n.name for n in self.nodes],
            [nd.name for nd in self.setup.data.nodes],
            wall_train=self.t_train,
            wall_mix=total - self.t_train - self.t_eval,
            wall_eval=self.t_eval,
            wall_total=total,
            stragglers=self.stragglers,
            extra={
                "virtual_time": self.finished_at,
                "abandoned": self.abandoned,
                **epochs_summary(self.line, self.late),
                **norm_summary([n.noise for n in self.nodes]),
                **drift_summary(self.drift, self.setup),
                **attack_summary(self.setup, final),
            },
            members=self._last_members(),
        )

    def _epoch(self, round: int) -> Epoch:
        assert self.line is not None
        return self.line.epoch_at(round)

    def _last_members(self) -> list[str] | None:
        """The last round's roster, where events changed it (``RunResult.averaged``)."""
        assert self.line is not None
        if len(self.line.epochs) == 1:
            return None
        return list(self._epoch(self.sc.training.rounds - 1).members)

    def _member(self, node: _Node) -> bool:
        """Whether ``node`` is a member in the run's last round (so must finish every round)."""
        return node.name in self._epoch(self.sc.training.rounds - 1).members

    def _on_train(self, now: float, index: int) -> None:
        node = self.nodes[index]
        if node.core is not None:
            self._dispatch(
                node, now, node.core.begin_round(node.round, now, node.params[0].numpy())
            )
        t0 = time.perf_counter()
        before = node.params.clone() if node.noise is not None else None
        if self.drift is not None:
            self.drift.inject(index, node.round)
        node.trainer.train_round(node.params, node.round)
        if node.noise is not None:
            assert before is not None
            node.noise.apply_(node.params, before)
        if node.attacker:
            apply_attack(self.setup, node.params, [0])
        spent = time.perf_counter() - t0
        self.t_train += spent
        self.train_by_round[node.round] = self.train_by_round.get(node.round, 0.0) + spent
        steps = node.trainer.steps_per_node()[0]
        self.clock.at(now + steps * self.sc.clock.step_time / node.speed, _Kind.PUBLISH, index)

    def _on_publish(self, now: float, index: int) -> None:
        node = self.nodes[index]
        if node.core is None:  # alone in its group: its mix is its own model
            self._mixed(node, now, node.round)
            return
        out = node.core.start_round(node.round, node.params[0].numpy(), now)
        self._dispatch(node, now, out)

    def _on_deliver(self, now: float, payload: tuple[str, str, int, bytes]) -> None:
        sender, receiver, epoch, frame = payload
        node = self.by_name[receiver]
        if node.epoch != epoch or node.core is None:
            self.late += 1  # sent in an epoch that has ended: the new cores never knew it
            return
        self._dispatch(node, now, node.core.receive(sender, frame, now))

    def _on_poll(self, now: float, index: int) -> None:
        node = self.nodes[index]
        if node.next_poll != now:
            return  # armed for a deadline that has since moved or been met
        node.next_poll = None
        if node.core is not None:
            self._dispatch(node, now, node.core.poll(now))

    def _dispatch(self, node: _Node, now: float, out: RoundOutput) -> None:
        """Put a core's frames on the (virtual) wire, handle its events, arm its deadline."""
        for peer, frame in out.sends:
            node.sent_bytes[node.round] = node.sent_bytes.get(node.round, 0) + len(frame)
            delay = self.sc.clock.latency + len(frame) / self.sc.clock.bandwidth
            self.clock.at(now + delay, _Kind.DELIVER, (node.name, peer, node.epoch, frame))
        self._handle(node, now, out.events)
        if node.core is None:
            return
        deadline = node.core.deadline
        if deadline is not None and (node.next_poll is None or deadline < node.next_poll):
            node.next_poll = deadline
            self.clock.at(deadline, _Kind.POLL, node.index)

    def _handle(self, node: _Node, now: float, events: tuple[RoundEvent, ...]) -> None:
        for event in events:
            if isinstance(event, Abandoned):
                self.abandoned += 1
                log.warning("%s abandons round %d: %s", node.name, event.round, event.reason)
            elif isinstance(event, Straggler):
                self.stragglers += 1
                log.info("round %d: %s closed without %s", event.round, node.name, event.peer)
            elif isinstance(event, RoundMixed):
                node.params[0].copy_(torch.from_numpy(np.asarray(event.model, dtype=np.float32)))
                self._mixed(node, now, event.round)

    def _mixed(self, node: _Node, now: float, round: int) -> None:
        """``node`` holds its round-``round`` model: record it, go on (or wait for the epoch)."""
        if self.drift is not None:
            self.drift.observe(node.index, round, node.params[0])
        self.finished_at = max(self.finished_at, now)
        node.round = round + 1
        if node.round < self.sc.training.rounds and node.round not in self._boundaries():
            self.clock.at(now, _Kind.TRAIN, node.index)
        self._completed(node, round, now)

    def _boundaries(self) -> list[int]:
        assert self.line is not None
        return self.line.boundaries()

    def _completed(self, node: _Node, round: int, now: float) -> None:
        slot = self.slots.get(round)
        if slot is None:
            slot = self.slots[round] = _Slot(torch.empty(len(self.nodes), self.setup.dim))
        slot.params[node.index].copy_(node.params[0])
        slot.filled += 1
        slot.sent += node.sent_bytes.pop(round, 0)
        last = round == self.sc.training.rounds - 1
        members = self._epoch(round).members
        if slot.filled < len(members) or (last and self.sc.gossip.mode == "async"):
            return
        full = self.slots.pop(round)
        if round + 1 in self._boundaries():
            self._switch(round + 1, full.params, now)
        self._record(round, full)

    def _switch(self, start: int, last: Tensor, now: float) -> None:
        """Every member of round ``start - 1`` is done: the next epoch's cores and models."""
        epochs = self.epochs
        epoch = next(e for e in epochs if e.epoch.start == start)
        index = {node.name: node.index for node in self.nodes}
        assert self.line is not None
        models = start_models(self.line, epoch, last, index)
        for node in self.nodes:
            node.epoch = epoch.epoch.number
            node.core = _epoch_core(self.setup, node.index, epoch, start)
            node.next_poll = None
            if node.name not in epoch.epoch.members:
                continue
            if node.name in models:
                node.params[0].copy_(models[node.name])
            node.round = start
            self.clock.at(now, _Kind.TRAIN, node.index)
        log.info(
            "round %d: epoch %d, %d members (%s absent)",
            start,
            epoch.epoch.number,
            len(epoch.epoch.members),
            ", ".join(sorted(epoch.epoch.absent)) or "none",
        )

    def _settle(self) -> None:
        """Push-sum: once nothing is in flight, each node's model is the x / w it holds.

        Shares sent in the last round arrive after their receivers' last step; a
        daemon absorbs them before it settles, and so does this engine, whose last
        round is recorded with the settled models (as the lock-step vectorized
        engine, where every share of a step is in before the next).
        """
        if self.sc.gossip.mode != "async":
            return
        for node in self.nodes:
            core = node.core
            assert isinstance(core, GossipRoundCore) and isinstance(core.gossip, PushSumGossip)
            node.params[0].copy_(torch.from_numpy(core.gossip.model()))
        last = self.sc.training.rounds - 1
        slot = self.slots.pop(last)
        slot.params.copy_(torch.cat([n.params for n in self.nodes]))
        self._record(last, slot)

    def _record(self, round: int, slot: _Slot) -> None:
        acc = loss = aggregate = None
        t0 = time.perf_counter()
        last = round == self.sc.training.rounds - 1
        members = self._epoch(round).members
        params = slot.params
        if len(members) < len(self.nodes):  # the round's members only
            params = params[[self.by_name[m].index for m in members]]
        if (round + 1) % self.sc.eval.every == 0 or last:
            data = self.setup.data
            if self.sc.privacy.private_metrics:
                figures = site_metrics(self.setup, params, range(self.setup.n))
                aggregate = masked_summary(self.setup, round, figures)
            else:
                acc, loss = evaluate(
                    self.setup.model, params, data.x_global_test, data.y_global_test
                )
        self.t_eval += time.perf_counter() - t0
        wall_now = time.perf_counter()
        sent = slot.sent / len(members)
        self.records.append(
            round_record(
                round,
                acc,
                loss,
                params,
                sent,
                wall_now - self.last_wall,
                aggregate,
                self.train_by_round.pop(round, 0.0),
            )
        )
        self.last_wall = wall_now
        if self.progress:
            self.progress(round + 1)
