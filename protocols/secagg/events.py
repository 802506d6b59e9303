"""What the secure-aggregation state machines hand back to the runtime that drives them.

Every call on a sender or receiver returns a list of these: messages to send
(``Send``) and events to act on (record the dropout declaration in the
ledger, use the aggregate, keep the own model on abandon, log an ignored
message). The cores never send or log anything themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.secagg.fixedpoint import Floats
from protocols.secagg.messages import DropoutDeclaration, Message
from protocols.secagg.phases import Phase
from protocols.secagg.prg import Codes


@dataclass(frozen=True)
class Send:
    """Send ``message`` to ``peer`` (encode it with ``message.encode()``)."""

    peer: str
    message: Message


@dataclass(frozen=True)
class DropoutsDeclared:
    """The receiver declared its dropout set: record it, signed, in the ledger's ``secagg`` map.

    Holders act only on the declaration the ledger holds for (round, receiver),
    which keeps every holder's view the same.
    """

    round: int
    receiver: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]

    def declaration(self) -> DropoutDeclaration:
        return DropoutDeclaration(self.round, self.receiver, self.survivors, self.dropped)


@dataclass(frozen=True, eq=False)
class Aggregated:
    """The round is done: ``total = sum over contributors of W_ij x_j`` (within the step).

    ``codes`` is the exact unmasked fixed-point sum. ``missing`` are the
    neighbours whose input is not in the sum (absent or dropped): the runtime
    decides how to re-weight, e.g. by giving their weight back to the receiver.
    """

    round: int
    receiver: str
    total: Floats
    codes: Codes
    contributors: tuple[str, ...]
    missing: tuple[str, ...]


@dataclass(frozen=True)
class Abandoned:
    """The round at this receiver is abandoned: it keeps its own model; nothing was leaked."""

    round: int
    receiver: str
    phase: Phase
    reason: str


@dataclass(frozen=True)
class Ignored:
    """A message that arrived too late (or from outside the roster) and was not used."""

    peer: str
    reason: str


Output = Send | DropoutsDeclared | Aggregated | Abandoned | Ignored
