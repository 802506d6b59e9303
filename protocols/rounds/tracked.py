"""Modes that mix more than the trained model, over a sync or a secure round core.

Gradient tracking (``protocols.tracking``) and quasi-global momentum
(``protocols.momentum``) change what a node mixes and what it does with the mix,
not how the mixing is done. ``TrackedRoundCore`` wraps the round core that mixes
(sync gossip, or secure aggregation over it, built for ``rule.width`` times the
model's length) and a ``RoundRule``:

    begin_round(r, now, origin)   the model local training starts from (copied)
    start_round(r, trained, now)  the inner core mixes rule.outgoing(origin, trained, scale(r))
    RoundMixed of the inner core  its model becomes rule.incoming(mix)

where ``scale(r)`` is round r's learning rate over the base rate (1 without a
schedule), so a node's round stays one call sequence, whatever the mode, and the secure sum
masks the whole outgoing vector (gradient tracking: [x - y, y] concatenated).
A round the inner core closes over its own vector alone (every neighbour missed
it, a secure receiver abandoned) hands that vector back: the rule then steps
with its own values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import numpy as np

from protocols.errors import LocalProtocolError
from protocols.gossip import RoundMixed
from protocols.rounds.core import Frame, RoundCore, RoundOutput, Vector
from protocols.rounds.secure import SecureRoundCore

CoreState = dict[str, Vector]


class RoundRule(Protocol):
    """What a mode mixes and what it makes of the mix; ``width`` vectors of model length."""

    width: int

    def outgoing(self, origin: Vector, trained: Vector, scale: float = 1.0) -> Vector: ...

    def incoming(self, mixed: Vector) -> Vector: ...

    def export_state(self) -> CoreState: ...

    def import_state(self, state: CoreState) -> None: ...


class TrackedRoundCore:
    """A round core whose model goes through ``rule`` on its way in and out (module docstring)."""

    def __init__(
        self, inner: RoundCore, rule: RoundRule, scale: Callable[[int], float] | None = None
    ) -> None:
        self._inner = inner
        self._rule = rule
        self._scale = scale
        self._origins: dict[int, Vector] = {}

    @property
    def inner(self) -> RoundCore:
        return self._inner

    @property
    def rule(self) -> RoundRule:
        return self._rule

    @property
    def deadline(self) -> float | None:
        return self._inner.deadline

    def begin_round(self, round: int, now: float, origin: Vector | None = None) -> RoundOutput:
        if origin is None:
            raise LocalProtocolError("this mode needs the model local training starts from")
        self._origins = {round: np.array(origin, dtype=np.float32, copy=True).ravel()}
        return self._map(self._inner.begin_round(round, now))

    def start_round(self, round: int, model: Vector, now: float) -> RoundOutput:
        origin = self._origins.pop(round, None)
        if origin is None:
            raise LocalProtocolError(f"round {round} was not begun with its model")
        scale = 1.0 if self._scale is None else self._scale(round)
        outgoing = self._rule.outgoing(origin, model, scale)
        return self._map(self._inner.start_round(round, outgoing, now))

    def receive(self, peer: str, frame: Frame, now: float) -> RoundOutput:
        return self._map(self._inner.receive(peer, frame, now))

    def poll(self, now: float) -> RoundOutput:
        return self._map(self._inner.poll(now))

    def resume_at(self, round: int) -> None:
        self._origins.clear()
        self._inner.resume_at(round)

    def confirm_declaration(
        self, round: int, receiver: str, dropped: frozenset[str], now: float
    ) -> RoundOutput:
        """A secure inner core's held declaration (``SecureRoundCore.confirm_declaration``)."""
        if not isinstance(self._inner, SecureRoundCore):
            raise LocalProtocolError("only a secure round holds dropout declarations")
        return self._map(self._inner.confirm_declaration(round, receiver, dropped, now))

    def export_state(self) -> CoreState:
        """The rule's arrays carried across rounds (only between rounds)."""
        return self._rule.export_state()

    def import_state(self, state: CoreState) -> None:
        self._rule.import_state(state)

    def _map(self, out: RoundOutput) -> RoundOutput:
        if not any(isinstance(e, RoundMixed) for e in out.events):
            return out
        events = tuple(
            dataclasses.replace(e, model=self._rule.incoming(e.model))
            if isinstance(e, RoundMixed)
            else e
            for e in out.events
        )
        return RoundOutput(out.sends, events)
