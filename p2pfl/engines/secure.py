"""Secure mixing in the protocol engine: each node's round runs SecAgg over its neighbourhood.

Node i learns only sum_{j in N(i)} W_ij x_j: every in-neighbour j runs a
``MaskingSender`` towards i, and i runs one ``AggregatingReceiver``. A round of
node i is then: at its start (before local training) deal the shares of a
fresh self-mask seed to every receiver it feeds; after training hand its model
to those senders; when its own receiver has aggregated, mix
x_i <- (W_ii x_i + aggregate) / (W_ii + sum of the contributors' W_ij).
If its receiver abandons the round (fewer than t survivors) the node keeps
its own model.

Simulation stand-ins, stated plainly: X25519 keys and the per-round self-mask
seeds are derived from the scenario seed with SHA-256, so a run is
reproducible; a daemon draws them from the operating system instead. The
dropout declaration goes straight from receiver to holders (a daemon records
it in the ledger first).

A node scheduled to drop out in round r deals its shares (so recovery is
needed), then vanishes for that round: it sends no masked input, answers no
reveal and ignores what is sent to it; it keeps its own trained model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from protocols import secagg
from protocols.gossip import Neighbourhood, RoundMixed, Straggler
from protocols.secagg import (
    Abandoned,
    Aggregated,
    AggregatingReceiver,
    DropoutsDeclared,
    MaskingSender,
    RoundContext,
    SecAggConfig,
    Send,
    Timeouts,
)

log = logging.getLogger(__name__)

HoodOf = Callable[[str, int], Neighbourhood]
"""(node, round) -> that node's neighbourhood in that round."""


@dataclass(frozen=True)
class SecureOutput:
    sends: tuple[tuple[str, bytes], ...] = ()
    events: tuple[Any, ...] = ()


class SecureNode:
    """One node's side of secure mixing: receiver of its round, sender to its out-neighbours."""

    def __init__(
        self,
        name: str,
        hood_of: HoodOf,
        cfg: SecAggConfig,
        *,
        federation_id: bytes,
        box_private: bytes,
        public_keys: dict[str, bytes],
        self_seed: Callable[[int, str], bytes],
        timeouts: Timeouts,
        dim: int,
        drop_rounds: frozenset[int] = frozenset(),
    ) -> None:
        self.name = name
        self._hood_of = hood_of
        self._cfg = cfg
        self._fed = federation_id
        self._box_private = box_private
        self._public = public_keys
        self._self_seed = self_seed
        self._timeouts = timeouts
        self._dim = dim
        self._drops = drop_rounds
        self._receivers: dict[int, AggregatingReceiver] = {}
        self._senders: dict[tuple[int, str], MaskingSender] = {}
        self._own: dict[int, np.ndarray] = {}
        self._outcome: dict[int, Aggregated | Abandoned] = {}
        self._closed: set[int] = set()  # rounds whose receiver finished: late messages are moot
        self._floor = 0  # rounds below it are never opened (see skip_to)
        self.abandoned = 0

    def _context(self, round: int, receiver: str) -> RoundContext:
        hood = tuple(sorted(self._hood_of(receiver, round).in_weights))
        return RoundContext(self._fed, round, receiver, hood, self._cfg)

    def _receiver(self, round: int, now: float) -> AggregatingReceiver | None:
        if round in self._drops or round in self._closed or round < self._floor:
            return None
        if round not in self._receivers:
            rx = AggregatingReceiver(
                self._context(round, self.name), dim=self._dim, timeouts=self._timeouts
            )
            rx.start(now)
            self._receivers[round] = rx
        return self._receivers[round]

    def skip_to(self, round: int) -> None:
        """Never open a receiver for rounds before ``round`` (a node resumed from a checkpoint)."""
        self._floor = max(self._floor, round)
        for r in [r for r in self._receivers if r < round]:
            del self._receivers[r]

    @property
    def deadline(self) -> float | None:
        times = [rx.deadline for rx in self._receivers.values() if rx.deadline is not None]
        return min(times) if times else None

    def begin_round(self, round: int, now: float) -> SecureOutput:
        """Before local training: open our receiver and deal our shares to each receiver we feed."""
        self._receiver(round, now)
        outputs: list[Any] = []
        for receiver in sorted(self._hood_of(self.name, round).out_shares):
            tx = MaskingSender(
                self._context(round, receiver),
                me=self.name,
                box_private=self._box_private,
                public_keys=self._public,
            )
            self._senders[(round, receiver)] = tx
            outputs += tx.share(self._self_seed(round, receiver))
        return self._flush(outputs, round)

    def start_round(self, round: int, model: np.ndarray, now: float) -> SecureOutput:
        """After local training: mask our model towards every receiver, then try to mix."""
        self._own[round] = np.ascontiguousarray(model, dtype=np.float32)
        if round in self._drops:
            log.info("%s drops out of round %d", self.name, round)
            stragglers = tuple(sorted(self._hood_of(self.name, round).in_weights))
            mixed = RoundMixed(round, self._own.pop(round), (), stragglers)
            return SecureOutput(events=(mixed,))
        outputs: list[Any] = []
        for receiver in sorted(self._hood_of(self.name, round).out_shares):
            weight = self._hood_of(receiver, round).in_weights[self.name]
            outputs += self._senders[(round, receiver)].set_input(self._own[round], weight)
        return self._flush(outputs, round)

    def receive(self, peer: str, frame: bytes, now: float) -> SecureOutput:
        message = secagg.decode(frame)
        round = message.round
        if round in self._drops:
            return SecureOutput()
        outputs: list[Any]
        if message.receiver == self.name:
            rx = self._receiver(round, now)
            if rx is None:
                log.debug(
                    "%s: late %s from %s for closed round %d",
                    self.name,
                    type(message).__name__,
                    peer,
                    round,
                )
                return SecureOutput()
            outputs = list(rx.receive(peer, message, now))
        else:
            tx = self._senders.get((round, message.receiver))
            if tx is None:
                return SecureOutput()
            outputs = list(tx.receive(peer, message))
        return self._flush(outputs, round)

    def poll(self, now: float) -> SecureOutput:
        sends: list[tuple[str, bytes]] = []
        events: list[Any] = []
        for round, rx in list(self._receivers.items()):
            out = self._flush(rx.tick(now), round)
            sends += out.sends
            events += out.events
        return SecureOutput(tuple(sends), tuple(events))

    def _flush(self, outputs: list[Any], round: int) -> SecureOutput:
        sends: list[tuple[str, bytes]] = []
        events: list[Any] = []
        for out in outputs:
            if isinstance(out, Send):
                sends.append((out.peer, out.message.encode()))
            elif isinstance(out, Aggregated | Abandoned):
                self._outcome[out.round] = out
                if isinstance(out, Abandoned):
                    self.abandoned += 1
                    log.warning("%s abandons round %d: %s", self.name, out.round, out.reason)
            elif isinstance(out, DropoutsDeclared) and out.dropped:
                events += [Straggler(out.round, peer) for peer in out.dropped]
        events += self._try_mix(round)
        return SecureOutput(tuple(sends), tuple(events))

    def _try_mix(self, round: int) -> list[RoundMixed]:
        if round not in self._own or round not in self._outcome:
            return []
        own = self._own.pop(round)
        outcome = self._outcome.pop(round)
        self._receivers.pop(round, None)
        self._closed.add(round)
        self._forget(round)
        hood = self._hood_of(self.name, round)
        if isinstance(outcome, Abandoned):
            return [RoundMixed(round, own, (), tuple(sorted(hood.in_weights)))]
        total_weight = hood.self_weight + sum(hood.in_weights[j] for j in outcome.contributors)
        mixed = (hood.self_weight * own + outcome.total) / np.float32(total_weight)
        return [RoundMixed(round, mixed.astype(np.float32), outcome.contributors, outcome.missing)]

    def _forget(self, round: int, keep: int = 4) -> None:
        """Drop sender state of rounds long closed (they may still answer a late reveal)."""
        for key in [k for k in self._senders if k[0] < round - keep]:
            del self._senders[key]
        self._closed = {r for r in self._closed if r >= round - keep}


def make_secure_node(setup: Any, i: int, names: list[str]) -> SecureNode:
    """Node i of a simulated secure federation (keys and seeds derived from the scenario seed)."""
    sc = setup.scenario
    rehearsal = setup.randomness
    keys = rehearsal.key_ring(names[i], names)
    drops = frozenset(r for node, r in sc.dropouts.schedule if node == i)
    return SecureNode(
        names[i],
        setup.graph.neighbourhood,
        sc.secagg_config(),
        federation_id=setup.federation,
        box_private=keys.box_private,
        public_keys=dict(keys.public_keys),
        self_seed=lambda round, receiver: rehearsal.self_mask_seed(names[i], round, receiver),
        timeouts=sc.secagg_timeouts(),
        dim=setup.dim,
        drop_rounds=drops,
    )
