"""A federation set up by hand starts: replicas that know only part of the roster link up.

A member that joined before the last invitation holds a ledger with only its
inviter and itself; a secure plan does not fit two members, so that replica has
no tentative graph. It must still link to the members it knows (ledger sync then
brings it the rest of the roster), or, when it has the smallest id and nobody it
knows dials it, it waits for its approvals until ``start_timeout``. And while a
node waits for approvals, torch's first-step costs are paid in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import p2pfl
from p2pfl.identity import create_identity
from p2pfl.ledger_file import save_ledger
from p2pfl.node import PlanError, RoundCompleted, rounds
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation
from p2pfl.node.config import load_config
from p2pfl.node.events import Event
from p2pfl.spec import Plan
from p2pfl.transport import MemoryNetwork
from protocols.ledger import Ledger

SITES = ("Cleveland", "Hungary", "Switzerland")
START_TIMEOUT = 20.0  # what the stranded replica waits before it gives up


def plan() -> dict[str, object]:
    return {
        "seed": 0,
        "data": {"input_shape": [37], "num_classes": 2},
        "model": {"name": "logreg"},
        "training": {"rounds": 1, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "topology": {"kind": "complete"},
        "gossip": {"mode": "sync", "round_timeout": 60.0},
        "secure": {
            "enabled": True,
            "share_timeout": 60.0,
            "masked_timeout": 60.0,
            "allow_no_dropout": True,  # three sites on a complete graph: no one may drop
        },
    }


def by_hand(tmp_path: Path, start_timeout: float = START_TIMEOUT) -> list[SiteFiles]:
    """Three sites whose ledgers are as ``federation create / invite / join / approve`` leave them.

    Site 1 joined first and has the smallest id: neither the founder nor site 2
    dials it. Its ledger knows the founder and itself; each ledger holds the
    approvals of the sites that wrote it (the founder's and site 2's: one copy).
    """
    second, joiner, founder = sorted((create_identity() for _ in SITES), key=lambda i: i.node_id)
    ids = [founder, joiner, second]
    sites = [
        Site(s.lower(), f"memory://{s.lower()}", "p2pfl.node.examples:heart_site", [s],
             limits={"start_timeout": start_timeout})
        for s in SITES
    ]  # fmt: skip
    files = local_federation(tmp_path, sites, plan(), tls=False, identities=ids)
    ledger = Ledger.found(
        founder.signing_key, name="hand", nonce=os.urandom(16), address=files[0].address
    )
    ledger.set_plan(founder.signing_key, plan(), clock=ledger.next_clock())
    ledger.admit(
        founder.signing_key,
        bytes(joiner.verify_key),
        clock=ledger.next_clock(),
        address=files[1].address,
    )
    joined = Ledger.from_updates(ledger.federation_id, [ledger.encode_state()])
    ledger.admit(
        founder.signing_key,
        bytes(second.verify_key),
        clock=ledger.next_clock(),
        address=files[2].address,
    )
    plan_hash = ledger.plan_hash()
    assert plan_hash is not None
    for identity in (founder, second):
        ledger.approve(identity.signing_key, plan_hash, clock=ledger.next_clock())
    joined.approve(joiner.signing_key, plan_hash, clock=joined.next_clock())
    assert set(joined.members()) == {founder.node_id, joiner.node_id}
    for site, replica in zip(files, (ledger, joined, ledger), strict=True):
        save_ledger(replica, site.directory / "ledger")
    return files


def test_a_replica_that_knows_only_its_inviter_still_links_and_trains(tmp_path: Path) -> None:
    files = by_hand(tmp_path)
    network = MemoryNetwork()
    events: list[list[Event]] = [[] for _ in files]

    async def one(i: int) -> None:
        async with p2pfl.Peer(load_config(files[i].config), network=network) as peer:

            async def watch() -> None:
                async for event in peer.events():
                    events[i].append(event)

            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(watch())
                await peer.run()

    async def run_all() -> None:
        async with asyncio.timeout(START_TIMEOUT + 60):
            await asyncio.gather(*(one(i) for i in range(len(files))))

    asyncio.run(run_all())
    for i, site_events in enumerate(events):
        done = [e for e in site_events if isinstance(e, RoundCompleted)]
        assert [e.round for e in done] == [1], (i, site_events)
        assert len(done[0].arrived) == 2


def test_torch_warms_up_while_the_node_waits_for_approvals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    founder = by_hand(tmp_path, start_timeout=2.0)[0]  # started alone: nobody approves
    stepped = threading.Event()
    real = rounds.warm_up

    def recorded(plan: Plan) -> Callable[[], None]:
        step = real(plan)

        def run() -> None:
            step()
            stepped.set()

        return run

    monkeypatch.setattr(rounds, "warm_up", recorded)

    async def alone() -> None:
        async with p2pfl.Peer(load_config(founder.config), network=MemoryNetwork()) as peer:
            await peer.run()

    with pytest.raises(PlanError, match="not approved"):
        asyncio.run(alone())
    assert stepped.wait(60)  # it ran though the plan was never approved
