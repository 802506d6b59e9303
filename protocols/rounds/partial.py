"""A round core that gossips only the shared coordinates of a node's model (partial sharing).

``PartialRoundCore`` wraps any round core built for ``selection.shared_dim``
values (sync gossip, or secure aggregation over sync): ``start_round`` hands it
``selection.gather(model)``, so every frame it makes, a plain model or a masked
input, carries the shared part alone, and every mask covers the shared part
alone; each ``RoundMixed`` it reports is turned back into a full model with
``selection.scatter``, the personal coordinates those the node trained, untouched
by any neighbour (FedRep's personal head, ``protocols.partial``).

The shell drives it like any round core and never sees the split (a secure
inner core's ``confirm_declaration`` is forwarded too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

import numpy as np

from protocols.errors import LocalProtocolError
from protocols.gossip import RoundMixed
from protocols.partial import Selection
from protocols.rounds.core import Frame, RoundCore, RoundEvent, RoundOutput, Vector
from protocols.rounds.secure import SecureRoundCore


class PartialRoundCore:
    """Only ``selection``'s shared coordinates reach ``inner`` (module docstring)."""

    def __init__(self, inner: RoundCore, selection: Selection) -> None:
        self._inner = inner
        self._selection = selection
        self._held: dict[int, Vector] = {}  # round -> the full trained model handed over

    @property
    def inner(self) -> RoundCore:
        """The core that mixes the shared part."""
        return self._inner

    @property
    def selection(self) -> Selection:
        return self._selection

    @property
    def deadline(self) -> float | None:
        return self._inner.deadline

    def begin_round(self, round: int, now: float, origin: Vector | None = None) -> RoundOutput:
        shared = None if origin is None else self._selection.gather(np.asarray(origin))
        return self._inner.begin_round(round, now, shared)

    def start_round(self, round: int, model: Vector, now: float) -> RoundOutput:
        if round in self._held:
            raise LocalProtocolError(f"round {round} was already started")
        full = np.array(model, copy=True)
        self._held[round] = full
        return self._full(self._inner.start_round(round, self._selection.gather(full), now))

    def receive(self, peer: str, frame: Frame, now: float) -> RoundOutput:
        return self._full(self._inner.receive(peer, frame, now))

    def poll(self, now: float) -> RoundOutput:
        return self._full(self._inner.poll(now))

    def resume_at(self, round: int) -> None:
        self._inner.resume_at(round)

    def confirm_declaration(
        self, round: int, receiver: str, dropped: Collection[str], now: float
    ) -> RoundOutput:
        """A secure inner core's ``confirm_declaration``, its round's mix widened."""
        if not isinstance(self._inner, SecureRoundCore):
            raise LocalProtocolError("only a secure core holds dropout declarations")
        return self._full(self._inner.confirm_declaration(round, receiver, dropped, now))

    def _full(self, out: RoundOutput) -> RoundOutput:
        if not any(isinstance(e, RoundMixed) for e in out.events):
            return out
        return RoundOutput(out.sends, tuple(self._widen(e) for e in out.events))

    def _widen(self, event: RoundEvent) -> RoundEvent:
        if not isinstance(event, RoundMixed):
            return event
        full = self._held.pop(event.round, None)
        if full is None:
            raise LocalProtocolError(f"round {event.round} mixed before this node started it")
        model = self._selection.scatter(full, np.asarray(event.model)).astype(full.dtype)
        return dataclasses.replace(event, model=model)
