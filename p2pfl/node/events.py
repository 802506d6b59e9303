"""What a node reports while it runs (``Peer.events()``, the daemon's log lines).

Small frozen dataclasses; ``kind`` names each for JSON and logs. Every ``round``
is a round number, 1 for the first (``p2pfl.node.numbering``): ``TrainingStarted``
names the first round this run will train, ``Finished`` how many are completed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str] = "event"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class LinkUp(Event):
    kind: ClassVar[str] = "link-up"
    peer: str


@dataclass(frozen=True)
class LinkDown(Event):
    kind: ClassVar[str] = "link-down"
    peer: str
    reason: str


@dataclass(frozen=True)
class Refused(Event):
    """A handshake was refused (a stranger, a revoked member, a bad signature, rate limiting)."""

    kind: ClassVar[str] = "refused"
    address: str
    peer: str
    code: str
    inbound: bool


@dataclass(frozen=True)
class TrainingStarted(Event):
    kind: ClassVar[str] = "training-started"
    round: int
    rounds: int
    roster: tuple[str, ...]
    neighbours: tuple[str, ...]
    resumed: bool


@dataclass(frozen=True)
class RoundSkipped(Event):
    """A resumed node joins its neighbours' round: the rounds they finished without it."""

    kind: ClassVar[str] = "round-skipped"
    first: int
    last: int


@dataclass(frozen=True)
class DropoutsDeclared(Event):
    kind: ClassVar[str] = "dropouts-declared"
    round: int
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class RoundCompleted(Event):
    kind: ClassVar[str] = "round-completed"
    round: int
    arrived: tuple[str, ...]
    stragglers: tuple[str, ...]
    accuracy: float | None
    loss: float | None
    seconds: float
    bytes_sent: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftDetected(Event):
    """A detector of this node's drift monitor fired (``p2pfl.drift``); it stays local."""

    kind: ClassVar[str] = "drift"
    round: int
    detector: str
    statistic: str
    value: float
    p_value: float
    threshold: float
    feature: int | None = None


@dataclass(frozen=True)
class Finished(Event):
    kind: ClassVar[str] = "finished"
    rounds: int
