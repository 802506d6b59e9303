"""The membership rule: epoch boundaries from acknowledgements, and the epochs of a run."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.membership import Event, Kind, MembershipError, State, Timeline, boundary

ROSTER = ("a", "b", "c", "d")


def test_a_boundary_waits_for_every_member_then_follows_the_latest() -> None:
    assert boundary({"a": 4, "b": 5}, ROSTER) is None
    assert boundary({"a": 4, "b": 5, "c": 4, "d": 7}, ROSTER) == 8
    assert boundary({"a": 4, "b": 5, "c": 4, "d": 7, "x": 99}, ROSTER) == 8  # a non-member
    with pytest.raises(MembershipError):
        boundary({}, ())


def _rehearse(seed: int, n: int) -> tuple[int, list[int], list[int]]:
    """A ring of ``n`` nodes in sync rounds while a change spreads to them by gossip.

    A node begins its next round only when neither neighbour is behind it (sync gossip
    keeps neighbours within a round). A node that knows of the change acknowledges it
    with the round it is in, and then does not begin its next round (``ack + 1``) before
    every acknowledgement is in. Returns the boundary, the round each node is in when
    the last acknowledgement arrives, and the acknowledgements.
    """
    rng = random.Random(seed)
    at = [0] * n
    knows = [False] * n
    knows[rng.randrange(n)] = True
    acks: dict[str, int] = {}
    members = [str(k) for k in range(n)]
    for _ in range(100_000):
        i = rng.randrange(n)
        j = (i + rng.choice((-1, 1))) % n
        if knows[j] and rng.random() < 0.2:
            knows[i] = True
        if knows[i] and str(i) not in acks:
            acks[str(i)] = at[i]
        e = boundary(acks, members)
        if e is not None:
            return e, at, [acks[m] for m in members]
        behind = any(at[(i + d) % n] < at[i] for d in (-1, 1))
        if not behind and str(i) not in acks:
            at[i] += 1
    raise AssertionError("the change never reached every node")


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 10_000), st.integers(3, 9))
def test_no_member_begins_the_boundary_round_before_it_knows_the_boundary(
    seed: int, n: int
) -> None:
    e, at, acks = _rehearse(seed, n)
    assert e == 1 + max(acks)
    assert max(at) < e  # when the boundary becomes known, nobody has begun round e


def test_joins_leaves_and_revocations_make_epochs_in_the_roster_order() -> None:
    line = Timeline.build(
        ROSTER,
        [
            Event(21, Kind.JOIN, ("e",)),
            Event(11, Kind.LEAVE, ("b",)),
            Event(16, Kind.REVOKE, ("c",)),
        ],
        order=("a", "b", "c", "d", "e"),
    )
    assert [(e.start, e.members) for e in line.epochs] == [
        (0, ("a", "b", "c", "d")),
        (11, ("a", "c", "d")),
        (16, ("a", "d")),
        (21, ("a", "d", "e")),
    ]
    assert line.boundaries() == [11, 16, 21]
    assert line.epoch_at(15).number == 1 and line.epoch_at(16).number == 2
    assert line.state("b", 10) is State.ACTIVE and line.state("b", 11) is State.LEFT
    assert line.state("c", 30) is State.REVOKED
    assert line.state("e", 20) is State.INVITED and line.state("e", 21) is State.ACTIVE
    assert line.first_round("e") == 21 and line.first_round("a") == 0
    assert line.first_round("zz") is None
    assert line.catching_up(line.epochs[3]) == {"e"}
    assert line.catching_up(line.epochs[1]) == frozenset()


def test_a_member_cut_off_from_the_quorum_is_absent_and_catches_up_on_return() -> None:
    line = Timeline.build(
        ROSTER, [Event(5, Kind.PARTITION, groups=(("c",),)), Event(15, Kind.HEAL)]
    )
    cut = line.epoch_at(5)
    assert cut.groups == (("c",), ("a", "b", "d"))
    assert cut.absent == {"c"} and cut.active == ("a", "b", "d")
    assert line.state("c", 10) is State.ABSENT
    healed = line.epoch_at(15)
    assert healed.groups == (ROSTER,) and not healed.absent
    assert line.catching_up(healed) == {"c"}


def test_halves_without_a_quorum_both_train_on_and_nobody_catches_up() -> None:
    line = Timeline.build(
        ROSTER, [Event(3, Kind.PARTITION, groups=(("a", "b"),)), Event(9, Kind.HEAL)]
    )
    assert line.epoch_at(3).groups == (("a", "b"), ("c", "d"))
    assert not line.epoch_at(3).absent
    assert line.catching_up(line.epoch_at(9)) == frozenset()


def test_a_member_that_leaves_during_a_partition_leaves_its_group() -> None:
    line = Timeline.build(
        ROSTER, [Event(2, Kind.PARTITION, groups=(("a", "b"),)), Event(4, Kind.LEAVE, ("b",))]
    )
    assert line.epoch_at(4).groups == (("a",), ("c", "d"))
    assert line.epoch_at(4).absent == {"a"}  # c and d hold a majority of the three


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([Event(3, Kind.JOIN, ("a",))], "already been a member"),
        ([Event(3, Kind.LEAVE, ("x",))], "not a member"),
        ([Event(3, Kind.LEAVE, ("a",)), Event(5, Kind.JOIN, ("a",))], "already been a member"),
        ([Event(3, Kind.LEAVE, ("a", "b", "c"))], "fewer than two"),
        ([Event(3, Kind.PARTITION, groups=(("x",),))], "not members"),
        ([Event(3, Kind.PARTITION, groups=(("a",), ("a", "b")))], "two groups"),
        ([Event(-1, Kind.HEAL)], "count from 0"),
    ],
)
def test_events_no_federation_could_follow_are_refused(events: list[Event], message: str) -> None:
    with pytest.raises(MembershipError, match=message):
        Timeline.build(ROSTER, events)


@settings(max_examples=40, deadline=None)
@given(st.randoms(use_true_random=False))
def test_every_node_derives_the_same_epochs_whatever_order_it_learnt_the_facts(
    rng: random.Random,
) -> None:
    events = [
        Event(4, Kind.JOIN, ("e",)),
        Event(4, Kind.LEAVE, ("a",)),
        Event(7, Kind.PARTITION, groups=(("b",),)),
        Event(9, Kind.REVOKE, ("d",)),
        Event(12, Kind.HEAL),
    ]
    reference = Timeline.build(ROSTER, events, order=(*ROSTER, "e"))
    shuffled = events[:]
    rng.shuffle(shuffled)
    assert Timeline.build(ROSTER, shuffled, order=(*ROSTER, "e")) == reference
