"""Three heart-disease hospitals as real nodes over plain ws on 127.0.0.1, in one process.

``local_federation`` writes their keys, configs and ledger (one site opts in to sharing
its own metrics); ``free_ports`` picks the ports first, since the ledger holds each
site's address. Secure aggregation and private metrics are on, so the federation's
accuracy exists only as the sum of masked ledger records.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from p2pfl.node.bootstrap import Site, SiteFiles, local_federation

SITES = ("Cleveland", "Hungary", "Switzerland")
SHARING = "Hungary"  # the site whose config says [privacy] share_metrics = true


def free_ports(n: int) -> list[int]:
    """``n`` loopback ports free a moment ago (bound together, so distinct)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def plan(rounds: int, *, dp: bool = False) -> dict[str, Any]:
    table: dict[str, Any] = {
        "seed": 0,
        "data": {"input_shape": [37], "num_classes": 2},
        "model": {"name": "logreg"},
        "training": {"rounds": rounds, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "topology": {"kind": "complete"},
        "gossip": {"mode": "sync", "round_timeout": 60.0},
        "secure": {
            "enabled": True,
            "share_timeout": 60.0,
            "masked_timeout": 60.0,
            "allow_no_dropout": True,  # three sites on a complete graph: no one may drop
        },
        "privacy": {"private_metrics": True},
    }
    if dp:
        table["privacy"].update(mechanism="delta", epsilon=50.0, clip=5.0)
    return table


def loopback_federation(root: Path, rounds: int, *, dp: bool = False) -> list[SiteFiles]:
    ports = free_ports(len(SITES))
    sites = [
        Site(
            name.lower(),
            f"ws://127.0.0.1:{port}",
            "p2pfl.node.examples:heart_site",
            [name],
            limits={"status_interval": 0.2},
            sections={"privacy": {"share_metrics": name == SHARING}},
        )
        for name, port in zip(SITES, ports, strict=True)
    ]
    return local_federation(root, sites, plan(rounds, dp=dp), tls=False)
