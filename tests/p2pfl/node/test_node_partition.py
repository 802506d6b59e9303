"""A federation split in two by a partition, and healed: each half agrees, then all six.

Six heart-disease nodes on a path, sync gossip, no secure aggregation: each one
the daemon's node (``p2pfl.Peer``), all in this process, over plain ws on
127.0.0.1. The sites are numbered in node-id order, the order of the plan's graph
(``Plan.graph``), so on the path node i dials node i + 1 (the smaller id dials,
``p2pfl.node.links``). Node 3's member record carries the address of a
``FaultProxy`` in front of its listener (``[node] advertise``): the proxy carries
the link 2-3 and no other, and cutting it splits the path into 0-1-2 and 3-4-5.

Once every node has completed a round, the proxy is partitioned both ways and
node 1 and node 4 each sign a record into their ledgers (a fresh approval of the
plan: the call ``p2pfl federation approve`` makes, written through the node as a
round's records are). The rounds go on in both halves, nodes 2 and 3 closing
each at the round timeout without the neighbour they lost (a straggler in sync
mode). During the partition, at a moment when each half's ledgers settle, the
three of a half must hold the same records (``records_hash``), each half its own
mark and its own rounds' progress and not the other half's mark, so the halves
differ. Then the proxy heals (it resets the link, which lost bytes), node 2
dials again, the replicas exchange what they miss, the rounds finish, and all
six ledgers, live and then as saved, must converge to the same records.

The partition lasts a few round timeouts, well under the websocket keepalive
(20 s of ping and 20 s of timeout): neither node sees its link go down until the
heal resets it; they see only a neighbour missing from their rounds. The nodes
are ``Peer`` objects in this process rather than ``p2pfl node run`` daemons so
that the test reads their live ledgers while the partition holds, and keeps
every node up until all six have converged (a daemon leaves once the members
still in the run have finished and its neighbours hold its records, or at its
``linger_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from daemons import events
from loopback import free_ports

import p2pfl
from p2pfl.identity import create_identity
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation
from p2pfl.node.config import load_config
from p2pfl.transport.faultproxy import FaultProxy
from protocols.ledger import Ledger

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from simulations.bench.soak_harness import (  # noqa: E402
    HOSPITALS,
    converged,
    ledger_records,
    records_hash,
)

pytestmark = pytest.mark.slow

NODES, CUT, ROUNDS = 6, 3, 10  # the proxy stands in front of node CUT: the link CUT-1 - CUT
ROUND_TIMEOUT = 2.0  # what a round of node 2 or 3 waits for its lost neighbour
TIMEOUT = 300.0  # the whole run, a guard
SETTLE = 120.0  # a half's (then the federation's) ledgers agreeing, a guard


def federation(root: Path) -> tuple[list[SiteFiles], int, int]:
    """The six sites in node-id order; node CUT's listen port and its proxy's."""
    identities = sorted((create_identity() for _ in range(NODES)), key=lambda i: i.node_id)
    ports = free_ports(NODES + 1)
    front = ports[NODES]
    plan = {
        "seed": 0,
        "data": {"input_shape": [37], "num_classes": 2},
        "model": {"name": "logreg"},
        "training": {"rounds": ROUNDS, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "topology": {"kind": "path"},
        "gossip": {"mode": "sync", "round_timeout": ROUND_TIMEOUT},
    }
    sites = [
        Site(
            f"n{i}",
            f"ws://127.0.0.1:{ports[i]}",
            "p2pfl.node.examples:heart_site",
            [HOSPITALS[i % len(HOSPITALS)]],
            address=f"ws://127.0.0.1:{front}" if i == CUT else "",
            limits={"threads": 1, "status_interval": 0.2, "backoff_max": 0.5},
        )
        for i in range(NODES)
    ]
    files = local_federation(root, sites, plan, tls=False, identities=identities)
    config = files[CUT].config
    table = tomllib.loads(config.read_text())
    table["node"]["advertise"] = files[CUT].address  # peers dial the proxy
    config.write_text(tomli_w.dumps(table))
    return files, ports[CUT], front


def digest(ledger: Ledger) -> str:
    return records_hash(ledger_records(ledger))


def mark(peer: p2pfl.Peer) -> str:
    """Sign a fresh approval of the plan into ``peer``'s ledger; the record's key."""
    node = peer.node
    ledger = node.ledger
    before = set(ledger.entries("approvals"))
    plan_hash = ledger.plan_hash()
    assert plan_hash is not None
    node.write_ledger(
        ledger.approve(node.identity.signing_key, plan_hash, clock=ledger.next_clock())
    )
    (key,) = set(ledger.entries("approvals")) - before
    return key


async def until(predicate: Any, timeout: float) -> None:
    """Poll ``predicate`` every 20 ms until it holds (a ledger may change at any frame)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def test_a_partition_splits_the_path_in_two_halves_that_agree_and_heal_into_one(
    tmp_path: Path,
) -> None:
    files, listen, front = federation(tmp_path)
    ids = [site.node_id for site in files]
    halves = (range(CUT), range(CUT, NODES))
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        async with (
            FaultProxy(("127.0.0.1", listen), port=front) as proxy,
            contextlib.AsyncExitStack() as stack,
        ):
            peers = [
                await stack.enter_async_context(p2pfl.Peer(load_config(f.config), insecure=True))
                for f in files
            ]
            ledgers = [peer.node.ledger for peer in peers]
            async with asyncio.timeout(TIMEOUT), asyncio.TaskGroup() as tasks:
                runs = [tasks.create_task(peer.run()) for peer in peers]
                await until(lambda: all(p.node.rounds.completed >= 1 for p in peers), TIMEOUT)
                proxy.partition("both")
                at_cut = [
                    ledger.progress().get(i, 0) for ledger, i in zip(ledgers, ids, strict=True)
                ]
                # Round ``beyond`` of node CUT - 1 or CUT starts after the cut, and the other
                # could not have sent its frame of that round before: closing it, each
                # closes a round without the other.
                beyond = max(at_cut[CUT - 1], at_cut[CUT]) + 2
                marks = (mark(peers[1]), mark(peers[CUT + 1]))

                def split() -> bool:
                    for half, own, other, edge in zip(
                        halves, marks, reversed(marks), (CUT - 1, CUT), strict=True
                    ):
                        if len({digest(ledgers[i]) for i in half}) != 1:
                            return False
                        approvals = ledgers[half[0]].entries("approvals")
                        if own not in approvals or other in approvals:
                            return False
                        if ledgers[half[0]].progress().get(ids[edge], 0) < beyond:
                            return False
                    return True

                await until(split, SETTLE)
                seen["split"] = [digest(ledger) for ledger in ledgers]
                seen["dropped"], seen["healed"] = proxy.dropped, proxy.heal()
            seen["completed"] = [run.result() for run in runs]
            await until(lambda: len({digest(ledger) for ledger in ledgers}) == 1, SETTLE)
            seen["healed_hash"] = digest(ledgers[0])
            approvals = ledgers[0].entries("approvals")
            seen["marks"] = all(key in approvals for key in marks)
            seen["connections"], seen["refused"] = proxy.connections, proxy.refused

    asyncio.run(scenario())
    split = seen["split"]
    assert len(set(split[:CUT])) == 1 and len(set(split[CUT:])) == 1
    assert split[0] != split[CUT]  # two halves, two states
    assert seen["dropped"] > 0 and seen["healed"] == 1  # the link lost bytes, then was reset
    assert seen["connections"] >= 2  # node 2 dialled again through the healed proxy
    assert seen["completed"] == [ROUNDS] * NODES
    assert seen["marks"]  # both halves' records in the one state
    for near, far in ((CUT - 1, CUT), (CUT, CUT - 1)):  # each lost the other for rounds
        assert ids[far] in {e["peer"] for e in events(files[near], "straggler")}
    assert not any(events(site, "peer-banned") for site in files)
    records, vectors, hashes = converged(files)  # the ledgers as the nodes saved them
    assert records and vectors, hashes
    assert set(hashes) == {seen["healed_hash"]}
