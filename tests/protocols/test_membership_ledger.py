"""The epochs a ledger implies: change keys, and ``ledger_timeline`` from its facts."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.membership import (
    LEDGER_KINDS,
    Kind,
    MembershipError,
    State,
    Timeline,
    change_key,
    ledger_timeline,
    parse_change,
)

ORDER = ("a", "b", "c", "d", "e")
FOUR = {"a", "b", "c", "d"}


def epochs(timeline: Timeline) -> list[tuple[int, tuple[str, ...]]]:
    return [(e.start, e.members) for e in timeline.epochs]


def test_change_keys_round_trip_and_refuse_what_is_not_one() -> None:
    for kind in (Kind.JOIN, Kind.LEAVE, Kind.REVOKE):
        assert parse_change(change_key(kind, "node")) == (kind, "node")
    assert change_key(Kind.LEAVE, "c") == "leave:c"
    for bad in ("join", "join:", "part:a", "JOIN:a", "join:a:b", "join: a", "join:" + "a" * 64, 3):
        with pytest.raises(MembershipError):
            parse_change(bad)
    with pytest.raises(MembershipError, match="not a change of the roster"):
        change_key(Kind.PARTITION, "a")


def test_without_changes_the_roster_is_who_approved() -> None:
    timeline, pending = ledger_timeline(ORDER, {"d", "a", "b"}, {}, (), {})
    assert epochs(timeline) == [(0, ("a", "b", "d"))] and pending == []
    assert timeline.state("c", 5) is State.INVITED


def test_a_join_is_pending_until_the_last_member_acknowledges_it() -> None:
    acks = {"a": {"join:e": 3}, "b": {"join:e": 5}, "c": {"join:e": 4}, "e": {"join:e": 0}}
    timeline, pending = ledger_timeline(ORDER, {*FOUR, "e"}, {}, (), acks)
    assert epochs(timeline) == [(0, ("a", "b", "c", "d"))] and pending == ["join:e"]
    acks["d"] = {"join:e": 2}  # the last one
    timeline, pending = ledger_timeline(ORDER, {*FOUR, "e"}, {}, (), acks)
    assert epochs(timeline) == [(0, ("a", "b", "c", "d")), (6, ORDER)] and pending == []
    assert timeline.catching_up(timeline.epochs[1]) == {"e"}
    assert timeline.first_round("e") == 6


def test_a_joiner_waits_for_its_own_approval() -> None:
    acks = {m: {"join:e": 1} for m in FOUR}
    timeline, pending = ledger_timeline(ORDER, FOUR, {}, (), acks)
    assert epochs(timeline) == [(0, ("a", "b", "c", "d"))] and pending == ["join:e"]


def test_a_leave_is_never_before_the_round_after_the_one_it_names() -> None:
    left = {"c": 6}
    timeline, pending = ledger_timeline(ORDER, FOUR, left, (), {"a": {"leave:c": 3}})
    assert len(timeline.epochs) == 1 and pending == ["leave:c"]
    acks = {"a": {"leave:c": 3}, "b": {"leave:c": 4}, "d": {"leave:c": 2}}  # c need not ack
    timeline, pending = ledger_timeline(ORDER, FOUR, left, (), acks)
    assert epochs(timeline) == [(0, ("a", "b", "c", "d")), (7, ("a", "b", "d"))]
    assert pending == [] and timeline.state("c", 6) is State.ACTIVE
    assert timeline.state("c", 7) is State.LEFT
    acks["b"]["leave:c"] = 9  # a member that learnt late
    assert epochs(ledger_timeline(ORDER, FOUR, left, (), acks)[0])[1] == (10, ("a", "b", "d"))


def test_acknowledgements_of_a_change_the_ledger_does_not_hold_wait_for_it() -> None:
    acks = {m: {"leave:c": 1, "revoke:d": 1} for m in FOUR}
    timeline, pending = ledger_timeline(ORDER, FOUR, {}, (), acks)
    assert len(timeline.epochs) == 1 and pending == []


def test_a_leave_then_a_revocation() -> None:
    acks = {
        "a": {"leave:c": 3, "revoke:d": 8},
        "b": {"leave:c": 4, "revoke:d": 9},
        "d": {"leave:c": 2},
    }
    timeline, pending = ledger_timeline(ORDER, FOUR, {"c": 6}, {"d"}, acks)
    # Under the first epoch the revocation waits for c too; once c is gone it does not.
    assert epochs(timeline) == [
        (0, ("a", "b", "c", "d")),
        (7, ("a", "b", "d")),
        (10, ("a", "b")),
    ]
    assert pending == []
    assert [timeline.state(m, 12) for m in "abcd"] == [
        State.ACTIVE,
        State.ACTIVE,
        State.LEFT,
        State.REVOKED,
    ]
    assert timeline.state("d", 9) is State.ACTIVE  # revoked only from its boundary on


def test_a_revocation_known_early_comes_first_and_a_boundary_never_goes_back() -> None:
    acks = {
        "a": {"leave:c": 3, "revoke:d": 1},
        "b": {"leave:c": 4, "revoke:d": 1},
        "c": {"revoke:d": 2},
    }
    timeline, _ = ledger_timeline(ORDER, FOUR, {"c": 6}, {"d"}, acks)
    assert epochs(timeline) == [(0, ("a", "b", "c", "d")), (3, ("a", "b", "c")), (7, ("a", "b"))]
    acks = {"a": {"leave:c": 8, "revoke:d": 1}, "b": {"leave:c": 8, "revoke:d": 1}}
    acks["d"] = {"leave:c": 8}
    timeline, _ = ledger_timeline(ORDER, FOUR, {"c": 6}, {"d"}, acks)
    # The revocation needed c's acknowledgement until c left at 9; it takes effect there too.
    assert epochs(timeline) == [(0, ("a", "b", "c", "d")), (9, ("a", "b"))]


def test_a_revoked_member_that_had_left_changes_nothing_more() -> None:
    acks = {m: {"leave:c": 2, "revoke:c": 5} for m in ("a", "b", "d")}
    timeline, pending = ledger_timeline(ORDER, FOUR, {"c": 2}, {"c"}, acks)
    assert epochs(timeline) == [(0, ("a", "b", "c", "d")), (3, ("a", "b", "d"))]
    assert pending == [] and timeline.state("c", 9) is State.LEFT


def test_a_member_revoked_mid_run_was_in_the_roster_until_its_boundary() -> None:
    # Revocation takes the revoked member's approval out of the view: it counts anyway.
    acks = {m: {"revoke:d": 4} for m in ("a", "b", "c")}
    timeline, pending = ledger_timeline(ORDER, {"a", "b", "c"}, {}, {"d"}, acks)
    assert epochs(timeline) == [(0, ("a", "b", "c", "d")), (5, ("a", "b", "c"))]
    assert pending == []
    del acks["c"]
    timeline, pending = ledger_timeline(ORDER, {"a", "b", "c"}, {}, {"d"}, acks)
    assert len(timeline.epochs) == 1 and pending == ["revoke:d"]


def test_a_joiner_revoked_before_it_joins_never_does() -> None:
    acks = {m: {"join:e": 1, "revoke:e": 1} for m in FOUR}
    del acks["d"]["join:e"]  # the join waits for d; the revocation does not
    timeline, pending = ledger_timeline(ORDER, {*FOUR, "e"}, {}, {"e"}, acks)
    assert epochs(timeline) == [(0, ("a", "b", "c", "d"))] and pending == []
    assert timeline.first_round("e") is None


def test_a_change_that_would_leave_one_member_waits() -> None:
    acks = {"a": {"leave:b": 1}, "b": {}}
    timeline, pending = ledger_timeline(ORDER, {"a", "b"}, {"b": 1}, (), acks)
    assert len(timeline.epochs) == 1 and pending == ["leave:b"]
    acks["a"]["join:c"] = 1
    acks["b"]["join:c"] = 1
    timeline, pending = ledger_timeline(ORDER, {"a", "b", "c"}, {"b": 1}, (), acks)
    assert pending == ["leave:b"]  # c has not acknowledged it yet
    acks["c"] = {"leave:b": 2}
    timeline, pending = ledger_timeline(ORDER, {"a", "b", "c"}, {"b": 1}, (), acks)
    assert epochs(timeline) == [(0, ("a", "b")), (2, ("a", "b", "c")), (3, ("a", "c"))]
    assert pending == []


def test_pending_keys_come_in_the_canonical_order_and_strangers_are_ignored() -> None:
    acks = {"a": {"revoke:b": 1, "leave:c": 1, "join:e": 1, "join:zz": 1}, "zz": {"join:e": 0}}
    _, pending = ledger_timeline(ORDER, {*FOUR, "e"}, {"c": 3}, {"b"}, acks)
    assert pending == ["join:e", "leave:c", "revoke:b"]
    with pytest.raises(MembershipError, match="twice"):
        ledger_timeline(("a", "b", "a"), {"a", "b"}, {}, (), {})


KEYS = st.builds(change_key, st.sampled_from(LEDGER_KINDS), st.sampled_from(ORDER))
FACTS = st.fixed_dictionaries(
    {
        "approved": st.sets(st.sampled_from(ORDER)),
        "left": st.dictionaries(st.sampled_from(ORDER), st.integers(0, 12), max_size=3),
        "revoked": st.sets(st.sampled_from(ORDER), max_size=2),
        "acks": st.dictionaries(
            st.sampled_from(ORDER),
            st.dictionaries(KEYS, st.integers(0, 12), max_size=6),
            max_size=5,
        ),
    }
)


def _shuffled(facts: dict[str, object], seed: int) -> tuple[object, ...]:
    rng = random.Random(seed)

    def mix(mapping: dict[str, object]) -> dict[str, object]:
        items = list(mapping.items())
        rng.shuffle(items)
        return {k: mix(v) if isinstance(v, dict) else v for k, v in items}

    approved = list(facts["approved"])  # type: ignore[call-overload]
    revoked = list(facts["revoked"])  # type: ignore[call-overload]
    rng.shuffle(approved)
    rng.shuffle(revoked)
    return approved, mix(facts["left"]), revoked, mix(facts["acks"])  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(FACTS, st.integers(0, 2**32))
def test_the_same_facts_in_any_order_give_the_same_timeline(
    facts: dict[str, object], seed: int
) -> None:
    first = ledger_timeline(ORDER, *_shuffled(facts, 0))  # type: ignore[arg-type]
    assert ledger_timeline(ORDER, *_shuffled(facts, seed)) == first  # type: ignore[arg-type]
    timeline, pending = first
    for before, after in zip(timeline.epochs, timeline.epochs[1:], strict=False):
        assert before.start < after.start and len(after.members) >= 2
    gone = {m for e in timeline.epochs for m in (*e.left, *e.revoked)}
    assert gone <= set(facts["left"]) | set(facts["revoked"])  # type: ignore[call-overload]
    assert all(parse_change(key) for key in pending)
