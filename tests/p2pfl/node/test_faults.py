"""``Faults``: counts per member, one audit record per kind per window, bans that lift."""

from __future__ import annotations

import pytest

from p2pfl.node.faults import Faults


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_is_audited_once_per_kind_per_window_with_its_count() -> None:
    clock = Clock()
    faults = Faults(limit=10_000, window=60.0, ban_seconds=5.0, clock=clock)
    verdicts = [faults.fault("mallory", "malformed") for _ in range(500)]
    assert [v.audit for v in verdicts].count(True) == 1 and verdicts[0].count == 1
    assert faults.fault("mallory", "round").audit  # another kind: its own record
    clock.now += 60.0
    again = faults.fault("mallory", "malformed")
    assert again.audit and again.count == 500  # the 499 unrecorded ones and this one
    assert faults.snapshot()["mallory"]["kinds"] == {"malformed": 501, "round": 1}


def test_a_member_past_the_limit_in_the_window_is_banned_until_the_ban_lifts() -> None:
    clock = Clock()
    faults = Faults(limit=3, window=10.0, ban_seconds=5.0, clock=clock)
    assert not faults.fault("m", "frame").banned
    clock.now += 11.0  # the first one leaves the window
    assert not faults.fault("m", "frame").banned
    assert not faults.fault("m", "frame").banned
    assert not faults.banned("m")
    assert faults.fault("m", "frame").banned and faults.banned("m")
    assert not faults.banned("other")
    assert not faults.fault("m", "frame").banned  # already banned: no second ban
    clock.now += 5.0
    assert not faults.banned("m")
    status = faults.snapshot()["m"]
    assert status["bans"] == 1 and not status["banned"] and status["faults"] == 5


def test_faults_refuse_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        Faults(limit=0, window=1.0, ban_seconds=1.0)
