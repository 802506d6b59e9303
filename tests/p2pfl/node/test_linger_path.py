"""On a path, no node leaves before the federation's last progress records have reached it.

Four sites on a path, the far end (the last by node id) slow in the last round:
its neighbour's last round waits for it, the two sites beyond do not. A node
used to leave once its own neighbours were done, so the near end saved a ledger
in which the far half had not finished. Now each node also waits (within
``linger_timeout``) for the progress records of the members further off, which
its neighbours, waiting in turn, pass on: every saved ledger says every member
finished every round.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from memory_federation import plan as heart_plan

import p2pfl
from p2pfl.identity import create_identity
from p2pfl.ledger_file import load_ledger
from p2pfl.node.bootstrap import Site, local_federation
from p2pfl.node.config import load_config
from p2pfl.node.local import Learner
from p2pfl.transport import MemoryNetwork

ROUNDS = 2
HOSPITALS = ("Cleveland", "Hungary", "VA Long Beach", "Switzerland")  # the far end's is smallest
SLOW = 1.5  # seconds the far end's last round of training takes beyond its own
TIMEOUT = 120


def test_every_saved_ledger_holds_the_far_ends_last_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    identities = sorted((create_identity() for _ in HOSPITALS), key=lambda i: i.node_id)
    plan = {**heart_plan(ROUNDS), "topology": {"kind": "path"}}  # sync, round timeout 60 s
    sites = [
        Site(
            f"n{i}",
            f"memory://n{i}",
            "p2pfl.node.examples:heart_site",
            [hospital],
            limits={"status_interval": 0.2},
        )
        for i, hospital in enumerate(HOSPITALS)
    ]
    files = local_federation(tmp_path, sites, plan, tls=False, identities=identities)

    train = Learner.train
    sizes: dict[int, int] = {}

    def slow_far_end(learner: Learner, round: int) -> None:
        rows = sizes.setdefault(id(learner), int(learner.data.x_train.shape[0]))
        if round == ROUNDS - 1 and rows == min(sizes.values()) and len(sizes) == len(HOSPITALS):
            time.sleep(SLOW)  # the far end (Switzerland: the fewest rows) in its last round
        train(learner, round)

    monkeypatch.setattr(Learner, "train", slow_far_end)
    network = MemoryNetwork()

    async def one(config: Path) -> None:
        async with p2pfl.Peer(load_config(config), network=network) as peer:
            await peer.run()

    async def every() -> None:
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(*(one(site.config) for site in files))

    asyncio.run(every())
    assert len(sizes) == len(HOSPITALS)  # every site trained: the far end was found
    ids = [site.node_id for site in files]
    for site in files:
        progress: dict[str, Any] = load_ledger(site.directory / "ledger").progress()
        assert {m: progress.get(m) for m in ids} == dict.fromkeys(ids, ROUNDS), site.name
