"""Records a tool writes beside a running node reach it (``p2pfl.node.inbox``), and a
member revoked meanwhile is cut off at once: its links closed, its frames refused.

A node rewrites its ledger file from its replica, so a revoke saved into the file
alone would be overwritten and never reach the federation while the node runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from daemons import LIMITS, SITES, audited, heart_plan, log_tail, start_logged, wait_for
from loopback import free_ports

from p2pfl.cli import main
from p2pfl.ledger_file import (
    encode_ledger_file,
    inbox_of,
    load_ledger,
    open_inbox,
    post_update,
    save_ledger,
    save_record,
)
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation
from p2pfl.node.inbox import merge_inbox
from protocols.ledger import Ledger, node_id_for


def founded(tmp_path: Path) -> tuple[Ledger, nacl.signing.SigningKey, str, Path]:
    """A ledger file of a founder and one member; the founder's key and the member's id."""
    founder, member = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    ledger = Ledger.found(founder, name="t", nonce=os.urandom(16), address="ws://127.0.0.1:1")
    ledger.admit(founder, bytes(member.verify_key), clock=ledger.next_clock(), address="ws://x:2")
    path = tmp_path / "ledger"
    save_ledger(ledger, path)
    return ledger, founder, node_id_for(bytes(member.verify_key)), path


def recorder() -> tuple[list[tuple[str, dict[str, Any]]], Any]:
    records: list[tuple[str, dict[str, Any]]] = []
    return records, lambda event, **fields: records.append((event, fields))


def test_without_a_running_node_the_record_is_in_the_file_alone(tmp_path: Path) -> None:
    ledger, founder, member, path = founded(tmp_path)
    update = ledger.revoke(founder, member, clock=ledger.next_clock())
    assert save_record(ledger, path, update) is False
    assert not inbox_of(path).exists()
    assert member in load_ledger(path).revoked()


def test_a_posted_record_is_merged_flooded_and_deleted(tmp_path: Path) -> None:
    _, founder, member, path = founded(tmp_path)
    running = load_ledger(path)  # the node's replica, loaded when it started
    open_inbox(path)
    tool = load_ledger(path)
    update = tool.revoke(founder, member, clock=tool.next_clock())
    assert save_record(tool, path, update) is True
    flooded: list[bytes] = []
    records, record = recorder()
    assert merge_inbox(path, running, flood=flooded.append, record=record) == 1
    assert member in running.revoked() and flooded
    assert [e for e, _ in records] == ["inbox-merged"] and records[0][1]["changed"] is True
    assert list(inbox_of(path).iterdir()) == []
    # The same record posted twice changes nothing the second time.
    post_update(path, tool.federation_id, update)
    flooded.clear()
    assert merge_inbox(path, running, flood=flooded.append, record=record) == 0
    assert flooded == [] and records[-1] == ("inbox-merged", records[-1][1])
    assert records[-1][1]["changed"] is False


def test_bad_posts_are_audited_and_removed_partial_ones_kept(tmp_path: Path) -> None:
    ledger, founder, member, path = founded(tmp_path)
    inbox = open_inbox(path)
    (inbox / "1-1.update").write_bytes(b"not a ledger file")
    other = encode_ledger_file("another-federation", [ledger.revoke(founder, member, clock=9)])
    (inbox / "2-1.update").write_bytes(other)
    garbage = encode_ledger_file(ledger.federation_id, [b"\x07\x07\x07"])
    (inbox / "3-1.update").write_bytes(garbage)
    partial = inbox / ".4-1.update.abcd.tmp"  # a tool killed while it wrote its post
    partial.write_bytes(b"half")
    running = load_ledger(path)
    records, record = recorder()
    assert merge_inbox(path, running, flood=lambda _: None, record=record) == 0
    refused = [f for e, f in records if e == "inbox-refused"]
    assert [f["post"] for f in refused] == ["1-1.update", "2-1.update", "3-1.update"]
    assert "not a p2pfl ledger file" in refused[0]["error"]
    assert "another-federation" in refused[1]["error"]
    assert "not a ledger update" in refused[2]["error"]
    assert member not in running.revoked()
    assert sorted(p.name for p in inbox.iterdir()) == [partial.name]


# -- real daemons -------------------------------------------------------------------------

ROUNDS = 5000  # more than the test waits for: it stops the daemons itself
GUARD = 90.0  # seconds, a bound for a loaded machine (each wait ends when it sees its line)


def federation(root: Path) -> list[SiteFiles]:
    ports = free_ports(3)
    plan = heart_plan(ROUNDS, round_timeout=60.0)
    limits = LIMITS
    sites = [
        Site(name.lower(), f"ws://127.0.0.1:{port}", "p2pfl.node.examples:heart_site", [name],
             limits=dict(limits))
        for name, port in zip(SITES, ports, strict=True)
    ]  # fmt: skip
    return local_federation(root, sites, plan, tls=False)


@pytest.mark.slow
def test_a_member_revoked_while_training_is_cut_off_at_once(tmp_path: Path) -> None:
    sites = federation(tmp_path)
    founder, other, revoked = sites
    procs = [start_logged(site) for site in sites]
    try:
        assert wait_for(lambda: all(audited(s, "round") for s in sites), 120), log_tail(founder)
        code = main(
            ["federation", "revoke", "--key", str(founder.directory / "node.key"),
             "--ledger", str(founder.directory / "ledger"), revoked.node_id]
        )  # fmt: skip
        assert code == 0
        # The founder's node merges the post and floods the record; both members close the
        # revoked member's link and refuse it when it dials again.
        assert wait_for(lambda: audited(founder, "inbox-merged"), GUARD), log_tail(founder)
        for site in (founder, other):
            closed = lambda s=site: [  # noqa: E731
                e for e in audited(s, "link-closed") if e["peer"] == revoked.node_id
            ]
            assert wait_for(closed, GUARD), log_tail(site)
        # It is refused when it dials again, or it learnt of its revocation and stopped.
        assert wait_for(
            lambda: (
                any(
                    e["peer"] == revoked.node_id
                    for s in (founder, other)
                    for e in audited(s, "auth-refused")
                )
                or any(e["state"] == "revoked" for e in audited(revoked, "membership-ended"))
            ),
            GUARD,
        ), log_tail(other)
        # The revocation reached the other member's ledger file by gossip, not by the tool.
        assert wait_for(
            lambda: revoked.node_id in load_ledger(other.directory / "ledger").revoked(), GUARD
        )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
