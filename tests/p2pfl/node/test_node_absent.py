"""A member cut off for ten rounds is absent, the others train on, it returns and catches up.

Four heart hospitals on a complete graph, secure aggregation on, each the daemon's
node (``p2pfl.Peer``) in this process over plain ws on 127.0.0.1. The sites are
numbered in node-id order and the last one's member record carries the address of
a ``FaultProxy`` in front of its listener: every other node dials it (the smaller id
dials), so all its links run through the proxy. Once every node has completed a
round the proxy is cut both ways. The three others go on, each round declaring the
fourth missing (secure aggregation goes on over the neighbours that dealt their
shares), and their ledgers show it
absent (``p2pfl federation status``, and ``absent`` in each node's status); the
fourth, whose rounds mix no neighbour, stops training on alone and waits to hear from
one (``cut-off``). After ten more rounds of the others the proxy heals; the fourth
sees them far ahead, skips the rounds it missed and starts from the mean of their
models, checked against the digests they recorded (``start-model``), and every node
completes every round.
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
from daemons import LIMITS, events, heart_plan
from loopback import free_ports

import p2pfl
from p2pfl.cli.federation_status import federation_status
from p2pfl.identity import create_identity
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation
from p2pfl.node.config import load_config
from p2pfl.transport.faultproxy import FaultProxy

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from simulations.bench.soak_harness import HOSPITALS  # noqa: E402

pytestmark = pytest.mark.slow

NODES, ROUNDS, AWAY = 4, 30, 10
CUT = NODES - 1  # the largest id: every link of it is dialled through its proxy
TIMEOUT = 420.0  # the whole run, a guard


def federation(root: Path) -> tuple[list[SiteFiles], int, int]:
    identities = sorted((create_identity() for _ in range(NODES)), key=lambda i: i.node_id)
    ports = free_ports(NODES + 1)
    front = ports[NODES]
    plan = heart_plan(
        ROUNDS,
        round_timeout=30.0,
        secure={
            "enabled": True,
            "share_timeout": 1.5,
            "masked_timeout": 1.5,
            "unmask_timeout": 3.0,
        },
    )
    sites = [
        Site(
            f"n{i}",
            f"ws://127.0.0.1:{ports[i]}",
            "p2pfl.node.examples:heart_site",
            [HOSPITALS[i]],
            address=f"ws://127.0.0.1:{front}" if i == CUT else "",
            limits=dict(LIMITS),
        )
        for i in range(NODES)
    ]
    files = local_federation(root, sites, plan, tls=False, identities=identities)
    config = files[CUT].config
    table = tomllib.loads(config.read_text())
    table["node"]["advertise"] = files[CUT].address
    config.write_text(tomli_w.dumps(table))
    return files, ports[CUT], front


async def until(predicate: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


def test_a_member_away_for_ten_rounds_is_absent_then_catches_up(tmp_path: Path) -> None:
    files, listen, front = federation(tmp_path)
    away = files[CUT].node_id
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
            others = peers[:CUT]
            async with asyncio.timeout(TIMEOUT), asyncio.TaskGroup() as tasks:
                runs = [tasks.create_task(peer.run()) for peer in peers]
                await until(lambda: all(p.node.rounds.completed >= 1 for p in peers), TIMEOUT)
                proxy.partition("both")
                start = max(p.node.rounds.completed for p in others)
                await until(lambda: min(p.node.rounds.completed for p in others) >= start + AWAY,
                            TIMEOUT)  # fmt: skip
                seen["away_at"] = peers[CUT].node.rounds.completed
                seen["absent"] = [
                    {m["node_id"]: m["state"] for m in federation_status(p.node.ledger)["members"]}
                    for p in others
                ]
                seen["status_absent"] = [p.node.rounds.status()["absent"] for p in others]
                seen["healed"] = proxy.heal()
            seen["completed"] = [run.result() for run in runs]

    asyncio.run(scenario())
    assert seen["completed"] == [ROUNDS] * NODES
    # While away it trained on alone no further than the round it found itself cut off in.
    (cut,) = events(files[CUT], "cut-off")
    assert seen["away_at"] == cut["round"] < ROUNDS - AWAY
    for states, absent in zip(seen["absent"], seen["status_absent"], strict=True):
        assert states[away] == "absent" and list(states.values()).count("active") == CUT
        assert absent == [away]
    # The others went on without it: rounds it sent nothing to closed without it (it never
    # dealt its shares, so no dropout to declare: it is missing from the round's roster).
    for site in files[:CUT]:
        without = [e for e in events(site, "round") if away in e["stragglers"]]
        assert len(without) >= AWAY - 1  # the first may still have had its frames
    # Back, it skipped what it missed and started from the others' checked models.
    (skipped,) = events(files[CUT], "rounds-skipped")
    (began,) = events(files[CUT], "start-model")
    # (the others' progress reaches it by gossip: at least all but the last round or two)
    assert skipped["first"] == cut["round"] + 1 and skipped["last"] >= cut["round"] + AWAY - 2
    assert began["round"] >= skipped["last"] and len(began["peers"]) == CUT
    rounds = [e["round"] for e in events(files[CUT], "round")]
    assert rounds[-1] == ROUNDS and began["round"] + 1 in rounds
