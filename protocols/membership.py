"""Membership over time: the roster in epochs, computed alike by every node.

A federation's roster changes (a member joins, leaves, is revoked) and its
network breaks (a partition cuts it into groups that cannot reach each other,
then heals). Every node must switch to the new roster at the same round, or
two neighbours mix with different weights and the average drifts. This module
is the one rule for that, shared by the simulator and the daemon; it has no
clock and no I/O.

The epoch boundary of a change (``boundary``). Each member of the current
epoch records, once, the round it was in when it first knew of the change
(its acknowledgement, ``ack``). The change takes effect at round ``1 + max``
of the acknowledgements of every member of the epoch. A member that knows of
a change does not begin round ``ack + 1`` before every acknowledgement is in,
so no member can begin the boundary round without knowing the boundary: a
member that has not yet seen the change is at most in round ``ack`` of its
own, later acknowledgement, which the maximum covers. In a rehearsal every
member learns of a change in the round the scenario names, so the boundary is
that round plus one.

Epochs (``Timeline``). Changes and network events are applied in a canonical
order (boundary round, then kind in ``KINDS`` order, then member), so every
node derives the same list of ``Epoch`` values from the same facts. Within an
epoch the members form ``groups``: one group when the network is whole, one per
side of a partition otherwise. A group that holds a strict majority of the
epoch's members is the quorum: members cut off from it are ``absent``
(their neighbours stop waiting for them and the rounds go on); when no group
holds a majority, nobody can mark anybody absent and every group trains on
apart. A member that was not active in the previous epoch (it joined, or it
returns from absence) catches up at the start of the epoch: it takes its
start model from its active neighbours instead of mixing a stale one into
theirs (``catching_up``).

From the ledger (``ledger_timeline``). A daemon reads the same facts from the
federation's ledger: who approved the plan, the signed leaves (``left``: the
round each leaver leaves after), the revocations, and every member's
acknowledgements (``acks``: per change key, ``change_key(kind, member)``, the
round it was in when it first knew of the change). A member is a joiner when
some acknowledgement names its join; the others that approved form the roster
of epoch 0. A leaver's own record counts as its acknowledgement of its leave,
so its boundary is never before the round after the one it named. The members
whose acknowledgements a change waits for are the active members of the epoch
in force, less the change's subject (a leaving or revoked member need not
acknowledge; a joiner is not a member yet). The change with the earliest
boundary is applied first (ties in the canonical order), then every other
boundary is computed again against the new epoch, and so on; a change whose
boundary is not yet known is pending, and so is one that would leave fewer than
two members. A boundary is never before the epoch in force began, so the
epochs only ever grow at the end as acknowledgements arrive.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from protocols.errors import MembershipError as MembershipError  # its callers import it here


class Kind(StrEnum):
    """What a membership event does."""

    JOIN = "join"  # an invited, approved member takes part from the boundary
    LEAVE = "leave"  # a member's signed leave: its last round is the one before the boundary
    REVOKE = "revoke"  # a revoked member: refused from the boundary on (its links at once)
    PARTITION = "partition"  # the network splits into ``groups``
    HEAL = "heal"  # the network is whole again


KINDS = tuple(Kind)
LEDGER_KINDS = (Kind.JOIN, Kind.LEAVE, Kind.REVOKE)  # changes of the roster, via the ledger
ABSENT_AFTER = 5
"""Rounds behind the furthest member past which a member counts as absent (sync rounds keep
neighbours within one round, so a member taking part is at most the graph's diameter behind)."""
MAX_CHANGE_KEY = 64
"""The longest change key (``"revoke:"`` and a node id of 26 characters fit well within)."""


class State(StrEnum):
    """A member's standing in one round, as ``p2pfl federation status`` shows it."""

    ACTIVE = "active"
    ABSENT = "absent"
    LEFT = "left"
    REVOKED = "revoked"
    INVITED = "invited"  # known to the ledger, not yet a member of any epoch


def boundary(acks: Mapping[str, int], members: Collection[str]) -> int | None:
    """The round a change takes effect, once every member of the epoch acknowledged it.

    ``acks`` maps a member to the round it was in when it first knew of the
    change; ``None`` while some member of ``members`` has not acknowledged.
    """
    if not members:
        raise MembershipError("an epoch has no members")
    missing = [m for m in members if m not in acks]
    if missing:
        return None
    return 1 + max(acks[m] for m in members)


@dataclass(frozen=True)
class Event:
    """One membership or network event: ``kind`` at the boundary ``round``.

    ``members`` are those joining, leaving or revoked; ``groups`` the sides of a
    partition (members not named in any group form one more group).
    """

    round: int
    kind: Kind
    members: tuple[str, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()

    def order(self) -> tuple[int, int, tuple[str, ...]]:
        return (self.round, KINDS.index(self.kind), self.members)


@dataclass(frozen=True)
class Epoch:
    """The roster from round ``start`` until the next epoch's start."""

    number: int
    start: int
    members: tuple[str, ...]  # every member of the federation in this epoch, in roster order
    groups: tuple[tuple[str, ...], ...]  # who can reach whom; one group when whole
    absent: frozenset[str] = frozenset()
    left: frozenset[str] = frozenset()
    revoked: frozenset[str] = frozenset()

    def group_of(self, member: str) -> tuple[str, ...]:
        for group in self.groups:
            if member in group:
                return group
        raise MembershipError(f"{member} is not a member of epoch {self.number}")

    @property
    def active(self) -> tuple[str, ...]:
        return tuple(m for m in self.members if m not in self.absent)


@dataclass(frozen=True)
class Timeline:
    """Every epoch of a run, from the initial roster and the events."""

    epochs: tuple[Epoch, ...]
    known: tuple[str, ...]  # every name the events and the roster mention, in roster order
    _starts: tuple[int, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def build(
        cls, roster: Sequence[str], events: Iterable[Event], order: Sequence[str] = ()
    ) -> Timeline:
        """The epochs of a run that starts with ``roster`` and meets ``events``.

        Members are kept in ``order`` (every name the run knows, in roster order:
        a simulation's node indices, a daemon's node ids); by default the roster's,
        then the joiners' in the order they join.

        ``MembershipError`` for events no federation could follow: joining twice,
        leaving before joining, a partition naming a non-member, a roster left
        with fewer than two members.
        """
        ordered = sorted(events, key=Event.order)
        joiners = [m for e in ordered if e.kind is Kind.JOIN for m in e.members]
        known = tuple(dict.fromkeys([*roster, *joiners]))
        if order:
            unknown = sorted(set(known) - set(order))
            if unknown:
                raise MembershipError(f"{', '.join(unknown)} are not in the order given")
            known = tuple(m for m in order if m in set(known))
        rank = {name: i for i, name in enumerate(known)}
        members = set(roster)
        if len(members) != len(roster):
            raise MembershipError("the roster names a member twice")
        gone: dict[str, State] = {}
        cut: tuple[tuple[str, ...], ...] = ()
        epochs = [_epoch(0, 0, members, cut, gone, rank)]
        for round, batch in _batches(ordered):
            if round < 0:
                raise MembershipError(f"{batch[0].kind} at round {round}: rounds count from 0")
            for event in batch:
                cut = _apply(event, members, gone, cut)
            epoch = _epoch(len(epochs), round, members, cut, gone, rank)
            if round == 0:
                epochs[0] = epoch
            else:
                epochs.append(epoch)
        return cls(tuple(epochs), known, tuple(e.start for e in epochs))

    def epoch_at(self, round: int) -> Epoch:
        """The epoch round ``round`` runs in."""
        if round < 0:
            raise MembershipError(f"round {round} is before the run")
        number = 0
        for i, start in enumerate(self._starts):
            if start <= round:
                number = i
        return self.epochs[number]

    def boundaries(self) -> list[int]:
        """Rounds at which a new epoch starts (never 0)."""
        return [e.start for e in self.epochs[1:]]

    def state(self, member: str, round: int) -> State:
        epoch = self.epoch_at(round)
        if member in epoch.revoked:
            return State.REVOKED
        if member in epoch.left:
            return State.LEFT
        if member in epoch.absent:
            return State.ABSENT
        if member in epoch.members:
            return State.ACTIVE
        return State.INVITED

    def catching_up(self, epoch: Epoch) -> frozenset[str]:
        """Active members of ``epoch`` that were not active in the one before: joiners and returns.

        They take their start model from their active neighbours (never from each other).
        """
        if epoch.number == 0:
            return frozenset()
        before = self.epochs[epoch.number - 1]
        return frozenset(m for m in epoch.active if m not in before.active)

    def first_round(self, member: str) -> int | None:
        """The first round ``member`` takes part in; ``None`` if it never does."""
        for epoch in self.epochs:
            if member in epoch.members:
                return epoch.start
        return None


def _batches(ordered: list[Event]) -> Iterable[tuple[int, list[Event]]]:
    batch: list[Event] = []
    for event in ordered:
        if batch and event.round != batch[0].round:
            yield batch[0].round, batch
            batch = []
        batch.append(event)
    if batch:
        yield batch[0].round, batch


def _apply(
    event: Event,
    members: set[str],
    gone: dict[str, State],
    cut: tuple[tuple[str, ...], ...],
) -> tuple[tuple[str, ...], ...]:
    """Apply one event to the roster in place; the partition that holds after it."""
    where = f"{event.kind} at round {event.round}"
    if event.kind is Kind.JOIN:
        for m in event.members:
            if m in members or m in gone:
                raise MembershipError(f"{where}: {m} has already been a member")
            members.add(m)
    elif event.kind in (Kind.LEAVE, Kind.REVOKE):
        for m in event.members:
            if m not in members:
                raise MembershipError(f"{where}: {m} is not a member then")
            members.discard(m)
            gone[m] = State.LEFT if event.kind is Kind.LEAVE else State.REVOKED
    elif event.kind is Kind.PARTITION:
        named = [m for g in event.groups for m in g]
        if len(set(named)) != len(named):
            raise MembershipError(f"{where}: a member is in two groups")
        strangers = sorted(set(named) - members)
        if strangers:
            raise MembershipError(f"{where}: {', '.join(strangers)} are not members then")
        return tuple(tuple(g) for g in event.groups if g)
    else:
        return ()
    if len(members) < 2:
        raise MembershipError(f"{where} leaves fewer than two members")
    return tuple(tuple(m for m in g if m in members) for g in cut)


def _epoch(
    number: int,
    start: int,
    members: set[str],
    cut: tuple[tuple[str, ...], ...],
    gone: Mapping[str, State],
    rank: Mapping[str, int],
) -> Epoch:
    roster = tuple(sorted(members, key=rank.__getitem__))
    groups = _groups(roster, cut)
    quorum = [g for g in groups if 2 * len(g) > len(roster)]
    absent = frozenset(m for m in roster if quorum and m not in quorum[0])
    return Epoch(
        number,
        start,
        roster,
        groups,
        absent,
        frozenset(m for m, s in gone.items() if s is State.LEFT),
        frozenset(m for m, s in gone.items() if s is State.REVOKED),
    )


def _groups(
    roster: tuple[str, ...], cut: tuple[tuple[str, ...], ...]
) -> tuple[tuple[str, ...], ...]:
    """The sides of the partition over ``roster`` (roster order); the rest form one more side."""
    if not cut:
        return (roster,)
    named = {m for g in cut for m in g}
    sides = [tuple(m for m in roster if m in set(g)) for g in cut]
    rest = tuple(m for m in roster if m not in named)
    return tuple(side for side in [*sides, rest] if side)


# -- the ledger's changes -----------------------------------------------------------


def change_key(kind: Kind, member: str) -> str:
    """The key under which members acknowledge a change of the roster: ``"join:<member>"``."""
    if kind not in LEDGER_KINDS:
        raise MembershipError(f"{kind} is not a change of the roster (join, leave or revoke)")
    key = f"{kind}:{member}"
    parse_change(key)
    return key


def parse_change(key: object) -> tuple[Kind, str]:
    """The kind and member of a change key; ``MembershipError`` if it is not one."""
    if not isinstance(key, str) or len(key) > MAX_CHANGE_KEY:
        raise MembershipError(f"{key!r} is not a change key")
    name, _, member = key.partition(":")
    kinds = {str(kind): kind for kind in LEDGER_KINDS}
    if name not in kinds or not member or ":" in member or member.strip() != member:
        raise MembershipError(f"{key!r} is not a change key (join:, leave: or revoke: a member)")
    return kinds[name], member


Change = tuple[Kind, str]


def ledger_timeline(
    order: Sequence[str],
    approved: Collection[str],
    left: Mapping[str, int],
    revoked: Collection[str],
    acks: Mapping[str, Mapping[str, int]],
) -> tuple[Timeline, list[str]]:
    """The epochs a ledger's facts imply, and the change keys still pending.

    ``order``: every member the ledger knows, in roster order (no name twice);
    ``approved``: those who approved the plan; ``left``: each leaver's round it
    leaves after; ``revoked``: the revoked members; ``acks``: per member, per
    change key, the round it was in when it first knew of the change. A revoked
    member counts as having approved: revocation takes its approval out of the
    ledger's view, and a member revoked mid-run was in the roster until its
    boundary. Names not in ``order`` are ignored. The pending keys come in the
    canonical order (kind, then ``order``). Deterministic: the same facts give the
    same result whatever the order of the mappings.
    """
    rank = {name: i for i, name in enumerate(order)}
    if len(rank) != len(order):
        raise MembershipError("the order names a member twice")
    votes = _votes(rank, left, revoked, acks)
    joiners = {m for kind, m in votes if kind is Kind.JOIN}
    eligible = {m for m in (*approved, *revoked) if m in rank}
    roster = [m for m in order if m in eligible and m not in joiners]
    members, gone = set(roster), set[str]()
    start, events, todo = 0, [], set(votes)
    while True:
        todo -= {c for c in todo if c[1] in gone}  # a change of somebody gone does nothing
        best: Event | None = None
        for kind, member in todo:
            found = _boundary(kind, member, votes[(kind, member)], members, eligible)
            if found is not None:
                event = Event(max(found, start), kind, (member,))
                if best is None or event.order() < best.order():
                    best = event
        if best is None:
            break
        member = best.members[0]
        todo.discard((best.kind, member))
        if best.kind is Kind.JOIN:
            members.add(member)
        else:
            gone.add(member)
            if member not in members:
                continue  # revoked or left before it joined: it never does
            members.discard(member)
        events.append(best)
        start = best.round
    timeline = Timeline.build(roster, events, order=order)
    pending = sorted(todo, key=lambda c: (KINDS.index(c[0]), rank[c[1]]))
    return timeline, [change_key(kind, member) for kind, member in pending]


def _votes(
    rank: Mapping[str, int],
    left: Mapping[str, int],
    revoked: Collection[str],
    acks: Mapping[str, Mapping[str, int]],
) -> dict[Change, dict[str, int]]:
    """Per change the ledger shows, who acknowledged it at which round.

    A join is a change as soon as an acknowledgement names it; a leave or a
    revocation once the ledger holds its record (acknowledgements that arrive
    before the record wait for it).
    """
    votes: dict[Change, dict[str, int]] = {}
    for member in left:
        if member in rank:
            votes[(Kind.LEAVE, member)] = {}
    for member in revoked:
        if member in rank:
            votes[(Kind.REVOKE, member)] = {}
    for author, theirs in acks.items():
        for key, round_ in theirs.items():
            kind, member = parse_change(key)
            if member not in rank or (kind is not Kind.JOIN and (kind, member) not in votes):
                continue
            votes.setdefault((kind, member), {})[author] = round_
    for member, round_ in left.items():
        if member in rank:
            votes[(Kind.LEAVE, member)][member] = round_  # its record is its acknowledgement
    return votes


def _boundary(
    kind: Kind, member: str, acks: Mapping[str, int], members: set[str], eligible: set[str]
) -> int | None:
    """The boundary of one change against the epoch in force; ``None`` while it is pending."""
    if kind is Kind.JOIN and member not in eligible:
        return None  # a joiner takes part once it approved the plan
    waiting = members - {member}
    if not waiting:
        return None
    if kind is not Kind.JOIN and member in members and len(waiting) < 2:
        return None  # the federation would fall below two members: the change waits
    found = boundary(acks, waiting)
    if found is not None and kind is Kind.LEAVE and member in acks:
        found = max(found, 1 + acks[member])
    return found
