"""Six sites of which four accept no connection, secure aggregation on: relays carry the cut links.

On a ring and on a random 3-regular graph, the edges between two unreachable
sites are relayed by the two reachable ones (``p2pfl.node.relaying``), the
handshake and the session run end to end through them, and the run completes
with every site's model mixed from all its neighbours, the relayed ones included.
The federation links in memory; ``test_a_relayed_federation_over_websockets`` does
it once over ws on 127.0.0.1 with a smaller graph.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from loopback import free_ports
from loopback import plan as secure_plan

import p2pfl
from p2pfl.ledger_file import load_ledger
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation
from p2pfl.node.config import load_config
from p2pfl.node.relaying import Relaying
from p2pfl.transport import MemoryNetwork

# (site, data) in the order of the sites; the first two accept connections
SITES = (
    ("basel", "Switzerland"),
    ("cleveland", "Cleveland"),
    ("hungary", "Hungary"),
    ("long-beach", "VA Long Beach"),
    ("zurich", "Switzerland"),
    ("akron", "Cleveland"),
)
REACHABLE = {"basel", "cleveland"}
ROUNDS = 2
TIMEOUT = 300


def federation(root: Path, topology: dict[str, Any], listen: list[str]) -> list[SiteFiles]:
    plan = secure_plan(ROUNDS)
    plan["topology"] = topology
    sites = [
        Site(
            name,
            where,
            "p2pfl.node.examples:heart_site",
            [data],
            limits={"status_interval": 0.2},
            reachable=name in REACHABLE,
        )
        for (name, data), where in zip(SITES, listen, strict=True)
    ]
    return local_federation(root, sites, plan, tls=False)


def run(files: list[SiteFiles], network: MemoryNetwork | None = None) -> dict[str, Any]:
    """Run every site to the end; each one's last status."""
    seen: dict[str, Any] = {}

    async def one(site: SiteFiles) -> None:
        config = load_config(site.config)
        if network is None:
            config = config.replace(insecure=True)
        async with p2pfl.Peer(config, network=network) as peer:
            await peer.run()
            seen[site.name] = peer.node.status()

    async def every() -> None:
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(*(one(site) for site in files))

    asyncio.run(every())
    return seen


def check(files: list[SiteFiles], seen: dict[str, Any]) -> None:
    ids = {f.name: f.node_id for f in files}
    names = {v: k for k, v in ids.items()}
    relays = seen["basel"]["relays"]
    assert relays, "no edge between two unreachable sites: the test would prove nothing"
    for status in seen.values():
        assert status["completed"] == ROUNDS and status["phase"] == "finished"
        assert status["relays"] == relays  # every site computed the same assignment
        assert status["secure"] is True
    for pair, relay in relays.items():
        a, b = pair.split()
        assert names[a] not in REACHABLE and names[b] not in REACHABLE
        assert names[relay] in REACHABLE
        for end, other in ((a, b), (b, a)):
            link = seen[names[end]]["neighbours"][other]
            assert link["via"] == relay and link["dials"] and link["connects"] >= 1
            assert link["last_round"] == ROUNDS  # mixed with it, through the relay
    if len(relays) >= 2:
        assert len(Counter(relays.values())) == 2  # both reachable sites relay
    for name in REACHABLE:
        audit = [json.loads(line) for line in (files[[f.name for f in files].index(name)].directory
                 / "audit.jsonl").read_text().splitlines()]  # fmt: skip
        spliced = {(e["peer"], e["to"]) for e in audit if e["event"] == "relay"}
        mine = {tuple(p.split()) for p, r in relays.items() if r == ids[name]}
        assert {tuple(sorted(s)) for s in spliced} == mine


@pytest.mark.parametrize(
    "topology", [{"kind": "ring"}, {"kind": "regular", "degree": 3}], ids=["ring", "3-regular"]
)
def test_four_unreachable_sites_of_six_complete_a_secure_run_through_relays(
    tmp_path: Path, topology: dict[str, Any]
) -> None:
    files = federation(tmp_path, topology, [f"memory://{name}" for name, _ in SITES])
    seen = run(files, MemoryNetwork())
    check(files, seen)
    for name, status in seen.items():
        assert (status["address"] == "") is (name not in REACHABLE)


def test_a_relayed_federation_over_websockets(tmp_path: Path) -> None:
    ports = free_ports(len(SITES))
    listen = [
        f"ws://127.0.0.1:{port}" if name in REACHABLE else ""
        for (name, _), port in zip(SITES, ports, strict=True)
    ]
    files = federation(tmp_path, {"kind": "ring"}, listen)
    check(files, run(files))


def test_a_relay_that_never_comes_is_replaced_once_it_falls_behind(tmp_path: Path) -> None:
    """Three reachable sites, one never started: its relayed link moves to another relay.

    Plain gossip on the complete graph, so every round waits out the missing site
    (``round_timeout``); once the others are more than two rounds ahead of it
    (``ABSENT_LAG``) every node hands its link to a present relay, and the two ends
    mix over it in the rounds that follow.
    """
    reachable = ("basel", "cleveland", "hungary")
    plan = {
        "seed": 0,
        "data": {"input_shape": [37], "num_classes": 2},
        "model": {"name": "logreg"},
        "training": {"rounds": 6, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "topology": {"kind": "complete"},
        "gossip": {"mode": "sync", "round_timeout": 3.0},
    }
    limits = {
        "status_interval": 0.2,
        "start_timeout": 3.0,
        "backoff_max": 1.0,
        "linger_timeout": 1.0,
    }
    sites = [
        Site(name, f"memory://{name}", "p2pfl.node.examples:heart_site", [data],
             limits=limits, reachable=name in reachable)
        for name, data in SITES
    ]  # fmt: skip
    files = local_federation(tmp_path, sites, plan, tls=False)
    missing = files[0].node_id  # basel: never started
    ids = sorted(f.node_id for f in files)
    complete = {(a, b) for a in ids for b in ids if a < b}
    before = Relaying(missing, load_ledger(files[0].directory / "ledger"), lambda: complete)
    first = before.snapshot()
    assert len(first) == 3 and sorted(Counter(first.values()).values()) == [1, 1, 1]
    seen = run(files[1:], MemoryNetwork())
    names = {f.node_id: f.name for f in files}
    final = seen["cleveland"]["relays"]
    assert set(final) == set(first) and missing not in final.values()
    assert {p: r for p, r in final.items() if first[p] != missing} == {
        p: r for p, r in first.items() if r != missing
    }  # only the missing relay's link moved
    for status in seen.values():
        assert status["completed"] == 6 and status["relays"] == final
    for pair, relay in final.items():
        a, b = pair.split()
        for end, other in ((a, b), (b, a)):
            link = seen[names[end]]["neighbours"][other]
            assert link["via"] == relay and link["last_round"] >= 4  # mixed after the move
