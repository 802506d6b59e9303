"""A daemon SIGKILLed at any point of a round loses only that round.

Real ``p2pfl node run`` daemons on loopback (``daemons.py``); the victim runs
through ``killer.py``, which SIGKILLs it at one point of round 2: in its local
training, between dealing its shares and sending its masked input (secure
aggregation on), halfway through writing a checkpoint, halfway through writing
the ledger file. After the kill, every checkpoint on disk reads back and the
ledger file loads; restarted at once, the victim resumes from its newest whole
checkpoint, no half-written temporary file is left, every node finishes the
run, and every audit chain verifies.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from daemons import (
    ROUNDS,
    audit_verifies,
    check_disk,
    events,
    federation,
    finish,
    finish_all,
    leftovers,
    reap,
    start,
    start_faulty,
)

from p2pfl.node.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow

# point -> (the call that kills, secure aggregation on)
POINTS = {
    "train": (2, False),  # round 2's training
    "masked": (2, True),  # round 2: shares dealt, masked input not yet sent
    "checkpoint": (2, False),  # round 2's checkpoint, half on disk
    "ledger": (2, False),  # the ledger save after round 2's checkpoint
}


@pytest.mark.parametrize("point", sorted(POINTS))
def test_a_daemon_killed_at_a_point_of_a_round_resumes_and_finishes(
    tmp_path: Path, point: str
) -> None:
    n, secure = POINTS[point]
    sites = federation(tmp_path, sites=3 if secure else 2, secure=secure)
    victim, others = sites[0], sites[1:]
    procs = [start(site) for site in others]
    try:
        killed = start_faulty(victim, point, n)
        code, log = finish(killed, timeout=120)
        assert code == -9, log[-3000:]
        resumed_from = check_disk(victim)  # reads every checkpoint back, loads the ledger
        if point in ("train", "masked", "checkpoint"):
            assert resumed_from == 1, "only round 2, the one in flight, may be lost"

        procs.append(start(victim))
        finish_all(procs, timeout=180)
    finally:
        reap(procs)

    assert [e["round"] for e in events(victim, "resumed")] == [resumed_from]
    if secure:  # it had dealt round 2's shares: it never deals twice, it joins round 3
        assert [e["round"] for e in events(victim, "round-abandoned")] == [2]
    assert leftovers(victim) == []
    for site in sites:
        assert check_disk(site) == ROUNDS
        assert audit_verifies(site), site.name
    last = sites[-1].directory / "checkpoints" / f"round-{ROUNDS:06d}.ckpt"
    assert victim.node_id in read_checkpoint(last, model=False).meta["arrived"]
