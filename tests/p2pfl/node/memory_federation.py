"""A three-node federation in one process (in-memory transport), for the node's tests.

``memory_federation`` sets up three heart-disease sites on the complete graph;
``run_peers`` runs each as a ``p2pfl.Peer`` to the end and returns what it
reported (events, log lines). The ``finished_run`` fixture (``conftest.py``)
is one such run of ``ROUNDS`` rounds.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import p2pfl
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation
from p2pfl.node.config import load_config
from p2pfl.node.events import Event
from p2pfl.transport import MemoryNetwork

SITES = ("Cleveland", "Hungary", "Switzerland")
TIMEOUT = 120
ROUNDS = 3


def plan(rounds: int) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {"input_shape": [37], "num_classes": 2},
        "model": {"name": "logreg"},
        "training": {"rounds": rounds, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "topology": {"kind": "complete"},
        "gossip": {"mode": "sync", "round_timeout": 60.0},
    }


def memory_federation(root: Path, rounds: int, **limits: Any) -> list[SiteFiles]:
    sites = [
        Site(
            s.lower(),
            f"memory://{s.lower()}",
            "p2pfl.node.examples:heart_site",
            [s],
            limits=dict(limits),
        )
        for s in SITES
    ]
    return local_federation(root, sites, plan(rounds), tls=False)


@dataclass
class Run:
    files: list[SiteFiles]
    events: list[list[Event]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)


class _Lines(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_peers(files: list[SiteFiles], rounds: int | None = None) -> Run:
    """Run every site to ``rounds`` (the plan's by default); their events and the log."""
    run = Run(files, [[] for _ in files])
    network = MemoryNetwork()
    logger = logging.getLogger("p2pfl")
    handler, level = _Lines(run.logs), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    async def one(i: int) -> None:
        async with p2pfl.Peer(load_config(files[i].config), network=network) as peer:

            async def watch() -> None:
                async for event in peer.events():
                    run.events[i].append(event)

            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(watch())
                await peer.run(rounds)

    async def every() -> None:
        async with asyncio.timeout(TIMEOUT):
            await asyncio.gather(*(one(i) for i in range(len(files))))

    try:
        asyncio.run(every())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return run
