"""A scenario's membership events: ``[[events]]``, rehearsed by the protocol engine.

Each entry names a round, a kind and the nodes (by index, as ``[dropouts]`` and
``[attack]`` do)::

    [[events]]          # a fifth site is invited and approved in round 20;
    round = 20          # it trains from round 21, the next epoch
    kind = "join"
    nodes = [4]

    [[events]]          # nodes 3 and 4 cannot reach the others from round 30 to 39
    round = 30
    kind = "partition"
    groups = [[3, 4]]

    [[events]]
    round = 40
    kind = "heal"

``join``, ``leave`` and ``revoke`` are ledger changes: recorded in the round
named, they take effect at the epoch boundary of ``protocols.membership``
(every member knows of them in that round, so the next one). A joining node is
outside the federation until then; a leaving or revoked node's last round is
the one named. ``partition`` and ``heal`` are the network's: they hold from the
round named. Rounds count from 0; every node not named by a ``join`` is a member
from the start. A ledger change recorded in the run's last round would take
effect after it, and is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from p2pfl.errors import ConfigError
from protocols.errors import MembershipError
from protocols.membership import LEDGER_KINDS, Event, Kind, Timeline

DAEMON_KINDS = ("leave",)
"""What ``engine = "processes"`` plays with real daemons: a leave, signed before the start
(``p2pfl federation leave --after-round``), which the daemons follow from the ledger."""


@dataclass(frozen=True)
class EventSection:
    """One ``[[events]]`` entry: ``kind`` in ``round`` for ``nodes`` (a partition: ``groups``)."""

    round: int
    kind: str
    nodes: list[int] = field(default_factory=list)
    groups: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        kinds = ", ".join(k.value for k in Kind)
        if self.kind not in {k.value for k in Kind}:
            raise ConfigError(f"[[events]] kind must be one of {kinds}, not {self.kind!r}")
        if self.round < 0:
            raise ConfigError(f"[[events]] {self.kind}: round {self.round} (rounds count from 0)")
        ledger = Kind(self.kind) in LEDGER_KINDS
        if ledger and (not self.nodes or self.groups):
            raise ConfigError(f"[[events]] {self.kind} at round {self.round} names its nodes")
        if self.kind == Kind.PARTITION and (self.nodes or not self.groups):
            raise ConfigError(
                f"[[events]] partition at round {self.round} names its groups "
                "(lists of node indices; the nodes in none form one more group)"
            )
        if self.kind == Kind.HEAL and (self.nodes or self.groups):
            raise ConfigError(f"[[events]] heal at round {self.round} names no nodes")

    def event(self, names: Sequence[str]) -> Event:
        """The event on the roster's names; its round is the boundary it takes effect at."""
        kind = Kind(self.kind)
        for i in [*self.nodes, *(i for g in self.groups for i in g)]:
            if not 0 <= i < len(names):
                raise ConfigError(
                    f"[[events]] {self.kind} at round {self.round}: node {i} does not exist "
                    f"(0..{len(names) - 1})"
                )
        at = self.round + 1 if kind in LEDGER_KINDS else self.round
        return Event(
            at,
            kind,
            tuple(names[i] for i in self.nodes),
            tuple(tuple(names[i] for i in g) for g in self.groups),
        )


def check_events(
    events: Sequence[EventSection], engine: str, mode: str, private_metrics: bool
) -> None:
    """Refuse ``[[events]]`` where the run could not follow them."""
    if not events:
        return
    if private_metrics:
        raise ConfigError(
            "[[events]] with privacy.private_metrics: the masked metrics sum over a fixed "
            "roster and are not rehearsed over changing ones yet"
        )
    if engine == "processes":
        others = sorted({e.kind for e in events} - set(DAEMON_KINDS))
        if others:
            raise ConfigError(
                f"[[events]] {', '.join(others)}: the daemons of engine 'processes' play "
                f"only {', '.join(DAEMON_KINDS)} (signed before they start); the protocol "
                "engine rehearses every kind"
            )
    elif engine != "protocol":
        raise ConfigError(
            f"[[events]] are rehearsed by the protocol engine (engine = 'protocol') and, "
            f"for {', '.join(DAEMON_KINDS)}, by the daemons of 'processes'; not {engine!r}"
        )
    if mode != "sync":
        raise ConfigError(
            f"[[events]] need gossip.mode = 'sync' (with or without [secure]): "
            f"{mode!r} keeps state about fixed neighbours across rounds"
        )


def timeline(events: Sequence[EventSection], names: Sequence[str], rounds: int) -> Timeline:
    """The epochs of a run of ``rounds`` rounds over ``names`` meeting ``events``."""
    for entry in events:
        if entry.round >= rounds:
            raise ConfigError(
                f"[[events]] {entry.kind} at round {entry.round}: "
                f"the run has rounds 0..{rounds - 1}"
            )
    built = [e.event(names) for e in events]
    for entry, event in zip(events, built, strict=True):
        if event.round >= rounds:  # a ledger change recorded in the last round
            raise ConfigError(
                f"[[events]] {entry.kind} at round {entry.round} takes effect at round "
                f"{event.round}, after the run's last ({rounds - 1})"
            )
    joining = {m for e in built if e.kind is Kind.JOIN for m in e.members}
    try:
        return Timeline.build([n for n in names if n not in joining], built, names)
    except MembershipError as exc:
        raise ConfigError(f"[[events]]: {exc}") from None
