"""Sync, CHOCO and push-sum gossip behind the round-core interface.

``GossipRoundCore`` wraps one of the message-level cores of
``protocols.gossip`` and does the byte work: it decodes each received frame
(``wire.decode``, no copy, bounded by ``max_elements``) and encodes each
message once, however many peers it goes to, with an optional ``prefix``
(a channel tag) written in front in that one copy. ``begin_round`` has
nothing to do in these modes.
"""

from __future__ import annotations

from protocols.gossip import GossipCore, Output
from protocols.rounds.core import Frame, RoundOutput, Vector
from protocols.wire import DEFAULT_MAX_ELEMENTS, decode, encode


class GossipRoundCore:
    """A gossip core that takes and returns frames (module docstring)."""

    def __init__(
        self,
        gossip: GossipCore,
        *,
        prefix: bytes = b"",
        max_elements: int = DEFAULT_MAX_ELEMENTS,
    ) -> None:
        self._gossip = gossip
        self._prefix = prefix
        self._max_elements = max_elements

    @property
    def gossip(self) -> GossipCore:
        """The message-level core (its push-sum mass, its round counter)."""
        return self._gossip

    @property
    def deadline(self) -> float | None:
        return self._gossip.deadline

    def begin_round(self, round: int, now: float, origin: Vector | None = None) -> RoundOutput:
        return RoundOutput()

    def start_round(self, round: int, model: Vector, now: float) -> RoundOutput:
        return self._frames(self._gossip.start_round(round, model, now))

    def receive(self, peer: str, frame: Frame, now: float) -> RoundOutput:
        message = decode(frame, max_elements=self._max_elements)
        return self._frames(self._gossip.receive(peer, message, now))

    def poll(self, now: float) -> RoundOutput:
        return self._frames(self._gossip.poll(now))

    def resume_at(self, round: int) -> None:
        self._gossip.resume_at(round)

    def _frames(self, out: Output) -> RoundOutput:
        encoded: dict[int, bytes] = {}  # one frame per message, however many peers get it
        sends = []
        for peer, message in out.sends:
            if id(message) not in encoded:
                encoded[id(message)] = encode(message, self._prefix)
            sends.append((peer, encoded[id(message)]))
        return RoundOutput(tuple(sends), out.events)
