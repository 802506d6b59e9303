"""A daemon whose disk fills up (or turns read-only) stops cleanly and resumes later.

Two real daemons on loopback (``daemons.py``); the victim runs through
``killer.py``, which makes its writes fail from round 2's checkpoint on: with
``ENOSPC`` for every temporary file in its data directory (a full disk: the
status file cannot be written either), or with ``EROFS`` for its checkpoints
only (the status file still can). The victim must stop with exit status 2 and
one line naming the directory and the OS error, no traceback, without training
on; its round-1 checkpoint and its ledger file stay whole; with the EROFS fault
its status says ``failed`` with that error. Started again with the disk back,
it resumes from round 1 and both nodes finish the run. A ledger file that
cannot be saved stops the node the same way at the end of the round whose
save failed (the saves in between only log it), that round's checkpoint kept.
"""

from __future__ import annotations

import os
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

from p2pfl.node.status import read_status

pytestmark = pytest.mark.slow

FAULTS = {"enospc": "No space left on device", "erofs": "Read-only file system"}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_daemon_that_cannot_write_stops_with_one_line_and_resumes(
    tmp_path: Path, fault: str
) -> None:
    victim, other = federation(tmp_path, sites=2)
    procs = [start(other)]
    try:
        failing = start_faulty(victim, fault, 2)
        code, log = finish(failing, timeout=120)
        assert code == 2, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        errors = [line for line in log.splitlines() if line.startswith("p2pfl: error:")]
        assert len(errors) == 1, log[-3000:]
        checkpoints = victim.directory / "checkpoints"
        assert f"{checkpoints}: cannot write the checkpoint of round 2" in errors[0]
        assert FAULTS[fault] in errors[0]
        assert check_disk(victim) == 1  # round 1 whole, no round 2, the ledger loads
        assert [e["round"] for e in events(victim, "round")] == [1], "it trained on"
        status = read_status(victim.directory)
        if fault == "erofs":
            assert status["phase"] == "failed"
            assert FAULTS[fault] in status["last_error"]
            assert str(checkpoints) in status["last_error"]
        else:
            assert status["phase"] != "finished"

        procs.append(start(victim))
        finish_all(procs, timeout=180)
    finally:
        reap(procs)

    assert [e["round"] for e in events(victim, "resumed")] == [1]
    assert leftovers(victim) == []
    for site in (victim, other):
        assert check_disk(site) == ROUNDS
        assert audit_verifies(site), site.name
    assert os.path.exists(victim.directory / "ledger")


def test_a_daemon_that_cannot_save_its_ledger_stops_after_the_round_and_resumes(
    tmp_path: Path,
) -> None:
    victim, other = federation(tmp_path, sites=2)
    procs = [start(other)]
    try:
        failing = start_faulty(victim, "ledger-enospc", 2)
        code, log = finish(failing, timeout=120)
        assert code == 2, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        errors = [line for line in log.splitlines() if line.startswith("p2pfl: error:")]
        assert len(errors) == 1, log[-3000:]
        assert f"{victim.directory / 'ledger'}: cannot write the ledger file" in errors[0]
        assert FAULTS["enospc"] in errors[0]
        kept = check_disk(victim)  # the ledger file still loads
        assert 1 <= kept < ROUNDS
        # Round ``kept`` is checkpointed but its save failed: it stopped there.
        assert [e["round"] for e in events(victim, "round")] == list(range(1, kept))
        procs.append(start(victim))
        finish_all(procs, timeout=180)
    finally:
        reap(procs)

    assert [e["round"] for e in events(victim, "resumed")] == [kept]
    for site in (victim, other):
        assert check_disk(site) == ROUNDS
        assert audit_verifies(site), site.name


def test_a_daemon_whose_audit_log_cannot_grow_stops_cleanly_and_its_chain_still_verifies(
    tmp_path: Path,
) -> None:
    victim, other = federation(tmp_path, sites=2)
    procs = [start(other)]
    try:
        failing = start_faulty(victim, "audit-enospc", 2)
        code, log = finish(failing, timeout=120)
        assert code == 2, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
        errors = [line for line in log.splitlines() if line.startswith("p2pfl: error:")]
        assert len(errors) == 1, log[-3000:]
        assert f"{victim.directory / 'audit.jsonl'}: cannot write the audit log" in errors[0]
        assert FAULTS["enospc"] in errors[0]
        kept = check_disk(victim)  # whole checkpoints, the ledger loads
        assert 1 <= kept < ROUNDS
        assert leftovers(victim) == []
        procs.append(start(victim))
        finish_all(procs, timeout=180)
    finally:
        reap(procs)

    assert [e["round"] for e in events(victim, "resumed")] == [kept]
    assert len(events(victim, "audit-torn-tail")) == 1  # the half line, closed on restart
    for site in (victim, other):
        assert check_disk(site) == ROUNDS
        assert audit_verifies(site), site.name
