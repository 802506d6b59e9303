"""The one interface every round core has, and the one output type they all return.

A round core is one node's side of one mode of mixing (sync, CHOCO, push-sum,
gradient tracking, quasi-global momentum; the last two plain or secure, as
sync). The shell that drives it (the protocol engine on a virtual clock, the
daemon over websockets) only moves bytes and reads events; it never decodes a
frame itself. The calls, in a round ``r``:

    begin_round(r, now, origin)  before local training (secure mode deals its shares;
                                 ``origin``, the model training starts from, is what
                                 gradient tracking and quasi-global momentum need)
    start_round(r, model, now)   after local training: the frames to send
    receive(peer, frame, now)    each frame a neighbour sent, as bytes or a memoryview
    poll(now)                    whenever ``now`` passes ``deadline``
    resume_at(r)                 on an idle core: rounds before ``r`` are never run here

Each returns a :class:`RoundOutput`: ``(peer, frame)`` pairs to send (one
``bytes`` object may be listed for several peers; send it as it is) and the
events the call produced, among them ``RoundMixed`` when the round is over.

``receive`` decodes without copying: a core may keep views into ``frame``
(a buffered early message), so the shell must not change the buffer after the
call. Anything a peer sent wrongly raises ``DecodeError`` (not a frame) or
``PeerProtocolError`` (a frame that breaks the protocol, naming the peer);
``LocalProtocolError`` means the shell called the core out of order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy.typing as npt

from protocols.gossip import Event
from protocols.secagg import Abandoned, Ignored

Vector = npt.NDArray[Any]
Frame = bytes | bytearray | memoryview


@dataclass(frozen=True)
class DeclarationHeld:
    """A receiver's dropout declaration waits for the shell's confirmation.

    Only a secure core built with ``declarations_need_confirmation`` reports
    it: the shell calls ``confirm_declaration(round, receiver, dropped, now)``
    once its ledger holds the same record signed by ``receiver``; until then
    nothing is revealed for it. ``peer`` is who sent it (the receiver).
    """

    round: int
    receiver: str
    dropped: tuple[str, ...]
    peer: str


@dataclass(frozen=True)
class DeclarationExpired:
    """A held declaration was never confirmed within the unmask timeout and is dropped.

    The shell reports it as ``peer``'s fault: a receiver that declares dropouts
    it does not record is breaking the protocol (or its ledger update was lost).
    """

    round: int
    receiver: str
    dropped: tuple[str, ...]
    peer: str


RoundEvent = Event | DeclarationHeld | DeclarationExpired | Abandoned | Ignored
"""What a call into a round core reports.

The gossip events (``RoundMixed``, ``Straggler``, ``LateArrival``, ``Buffered``),
the two declaration events above, and from secure aggregation ``Abandoned`` (a
receiver gave up its round; the node keeps its own model) and ``Ignored`` (a
message that came too late to matter).
"""


@dataclass(frozen=True)
class RoundOutput:
    """What a call into a round core produced: frames to send and events to act on."""

    sends: tuple[tuple[str, bytes], ...] = ()
    events: tuple[RoundEvent, ...] = ()

    def __add__(self, other: RoundOutput) -> RoundOutput:
        return RoundOutput(self.sends + other.sends, self.events + other.events)


class RoundCore(Protocol):
    """One node's round, in any mode (module docstring)."""

    @property
    def deadline(self) -> float | None:
        """When ``poll`` must next be called, or ``None`` when nothing waits on time."""
        ...

    def begin_round(self, round: int, now: float, origin: Vector | None = None) -> RoundOutput: ...

    def start_round(self, round: int, model: Vector, now: float) -> RoundOutput: ...

    def receive(self, peer: str, frame: Frame, now: float) -> RoundOutput: ...

    def poll(self, now: float) -> RoundOutput: ...

    def resume_at(self, round: int) -> None: ...
