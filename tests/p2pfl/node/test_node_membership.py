"""Members leave and are revoked while four daemons train (``p2pfl.node.membership``).

Four heart hospitals, plain sync gossip on a complete graph. Early in the run the
fourth signs its leave after round ``LEAVE``; later, the founder revokes the third.
Each change takes effect at the boundary the ledger implies (one past the latest
round in which a member first knew of it), on every node alike: the leaver and the
revoked member stop there, the two others train on to the last round, every node
records the same epochs, and the revoked key is refused from then on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from daemons import LIMITS, audited, heart_plan, log_tail, start_logged, wait_for
from loopback import free_ports

from p2pfl.identity import load_identity
from p2pfl.ledger_file import load_ledger, save_record
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation
from p2pfl.node.examples import HEART_SITES
from protocols.membership import Kind, change_key

pytestmark = pytest.mark.slow

ROUNDS = 300  # long enough that the revocation lands well before the end
LEAVE = 10  # the leaver takes part up to this round
REVOKE_AFTER = 15  # the founder revokes once it has completed this many rounds


def federation(root: Path) -> list[SiteFiles]:
    ports = free_ports(len(HEART_SITES))
    # A revoked member's frames are refused before its boundary: its neighbours treat it
    # as a straggler for those rounds.
    plan = heart_plan(ROUNDS, round_timeout=5.0)
    limits = LIMITS
    sites = [
        Site(name.split()[0].lower(), f"ws://127.0.0.1:{port}",
             "p2pfl.node.examples:heart_site", [name], limits=dict(limits))
        for name, port in zip(HEART_SITES, ports, strict=True)
    ]  # fmt: skip
    return local_federation(root, sites, plan, tls=False)


def sign(site: SiteFiles, write: Any) -> None:
    """What a tool does: load the site's ledger file, sign a record, save and post it."""
    path = site.directory / "ledger"
    ledger = load_ledger(path)
    key = load_identity(site.directory / "node.key").signing_key
    update = write(ledger, key)
    assert save_record(ledger, path, update), "no inbox: is the node running?"


def epochs(site: SiteFiles) -> list[tuple[int, int, list[str]]]:
    return [(e["number"], e["start"], e["members"]) for e in audited(site, "epoch")]


def acked(site: SiteFiles, key: str) -> int:
    """The round ``site`` acknowledged the change ``key`` in, from its audit log."""
    (round_,) = [e["round"] for e in audited(site, "acknowledged") if key in e["changes"]]
    return int(round_)


def ledger_acks(site: SiteFiles) -> dict[str, dict[str, int]]:
    return load_ledger(site.directory / "ledger").acks()


def completed(site: SiteFiles) -> int:
    return max((e["round"] for e in audited(site, "round")), default=0)


def test_a_leave_and_a_revocation_during_training(tmp_path: Path) -> None:
    sites = federation(tmp_path)
    founder, stayer, revoked, leaver = sites
    procs = [start_logged(site) for site in sites]
    try:
        assert wait_for(lambda: all(completed(s) >= 1 for s in sites), 180), log_tail(founder)
        sign(leaver, lambda ledger, key: ledger.leave(key, LEAVE, clock=ledger.next_clock()))
        assert wait_for(lambda: completed(founder) >= REVOKE_AFTER, 120), log_tail(founder)
        sign(
            founder,
            lambda ledger, key: ledger.revoke(key, revoked.node_id, clock=ledger.next_clock()),
        )
        for proc, site in ((procs[0], founder), (procs[1], stayer), (procs[3], leaver)):
            assert proc.wait(timeout=300) == 0, log_tail(site)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)

    leave_key = change_key(Kind.LEAVE, leaver.node_id)
    revoke_key = change_key(Kind.REVOKE, revoked.node_id)
    # The boundaries the acknowledgements imply, as the rule computes them (the revoked
    # member's records left the ledger's view: its audit log has its acknowledgements).
    leave_at = 1 + max(LEAVE, *(acked(s, leave_key) for s in (founder, stayer, revoked)))
    revoke_at = 1 + max(acked(s, revoke_key) for s in (founder, stayer))
    assert acked(founder, revoke_key) == ledger_acks(stayer)[founder.node_id][revoke_key]
    assert LEAVE < leave_at < revoke_at and revoke_at > REVOKE_AFTER
    everyone = sorted(s.node_id for s in sites)
    after_leave = [m for m in everyone if m != leaver.node_id]
    last = [m for m in after_leave if m != revoked.node_id]
    expected = [(1, leave_at, after_leave), (2, revoke_at, last)]
    assert epochs(founder) == expected, log_tail(founder)
    assert epochs(stayer) == expected, log_tail(stayer)
    assert epochs(leaver) == expected[:1]  # it stops where its epoch ends
    assert [e["round"] for e in audited(leaver, "membership-ended")] == [leave_at]
    assert completed(leaver) == leave_at - 1
    # Its neighbours let its links stand until it closed them, having heard from each
    # that they hold its last records (the dialling end cut its link at the boundary,
    # and the leaver waited out its whole linger for a confirmation that never came).
    log = (leaver.directory / "daemon.log").read_text()
    assert "stopped waiting for neighbours to confirm" not in log, log_tail(leaver)
    assert completed(founder) == completed(stayer) == ROUNDS
    # From the new epoch the two mix with each other only.
    last_round = audited(founder, "round")[-1]
    assert last_round["arrived"] == [stayer.node_id]
    # The revoked key was cut off and refused, and that is in the audit log.
    refused = [
        e
        for s in (founder, stayer)
        for name in ("auth-refused", "link-closed", "frames-refused")
        for e in audited(s, name)
        if e.get("peer") == revoked.node_id
    ]
    assert refused
