"""What the node dashboard costs: rounds with pages open against none, snapshots, audit checks.

    python simulations/bench/dashboard_bench.py [--rounds 20] [--repeats 2] [--pages 4]

1. Rounds. Three heart-disease hospitals in one process over loopback ws
   (complete graph, secure aggregation and private metrics on), run with no
   dashboard, then with site 0's dashboard pushing at ``interval = 0.05`` s to
   ``--pages`` websocket clients that read every snapshot; ``--repeats`` times
   each, alternating. Median seconds per round (the checkpoints' ``seconds``
   of site 0, round 0 left out) and the snapshots the pages received.
2. Snapshots. Every ``NodeView.snapshot`` call of the runs with pages, timed:
   median and maximum milliseconds (the event-loop part and the worker
   thread's files part together).
3. The audit log's chain check (``p2pfl.node.audit.verify_data``) on logs of
   1,000 to 50,000 lines: the dashboard checks the whole log again when it
   grew, no more often than keeps this to 5 % of the time.

The machine's cores are shared with other work: figures are reported, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from websockets.asyncio.client import connect

import p2pfl
from p2pfl.node.audit import AuditLog, verify_data
from p2pfl.node.bootstrap import Site, SiteFiles, local_federation
from p2pfl.node.checkpoint import list_checkpoints, read_checkpoint
from p2pfl.node.config import load_config
from p2pfl.node.view import NodeView

SITES = ("Cleveland", "Hungary", "Switzerland")


def plan(rounds: int) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {"input_shape": [37], "num_classes": 2},
        "model": {"name": "logreg"},
        "training": {"rounds": rounds, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "topology": {"kind": "complete"},
        "gossip": {"mode": "sync", "round_timeout": 60.0},
        "secure": {"enabled": True, "share_timeout": 60.0, "masked_timeout": 60.0},
        "privacy": {"private_metrics": True},
    }


def federation(root: Path, rounds: int) -> list[SiteFiles]:
    sockets = [socket.socket() for _ in SITES]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    sites = [
        Site(
            name.lower(),
            f"ws://127.0.0.1:{port}",
            "p2pfl.node.examples:heart_site",
            [name],
            sections={"dashboard": {"interval": 0.05}},
        )
        for name, port in zip(SITES, ports, strict=True)
    ]
    return local_federation(root, sites, plan(rounds), tls=False)


async def page(url: str, received: list[int], stop: asyncio.Event) -> None:
    """A browser stand-in: reads every snapshot until told to stop."""
    async with connect(url.replace("http", "ws", 1).rstrip("/") + "/events") as websocket:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await websocket.recv()
                    received[0] += 1


async def run(files: list[SiteFiles], pages: int) -> int:
    """One federation run; returns the snapshots the pages received."""
    received, stop = [0], asyncio.Event()

    async def one(i: int) -> None:
        dashboard = "127.0.0.1:0" if i == 0 and pages else None
        config = load_config(files[i].config)
        peer = p2pfl.Peer(config, insecure=True, dashboard=dashboard)
        async with peer, asyncio.TaskGroup() as tasks:
            url = peer.dashboard_url
            for _ in range(pages if url else 0):
                tasks.create_task(page(url or "", received, stop))
            await peer.run()
            stop.set()

    await asyncio.gather(*(one(i) for i in range(len(files))))
    return received[0]


def seconds_per_round(directory: Path) -> float:
    metas = [read_checkpoint(p, model=False).meta for _, p in list_checkpoints(directory)]
    return statistics.median(
        float(m["seconds"]) for m in sorted(metas, key=lambda m: m["round"])[1:]
    )


def timed_snapshots(samples: list[float]) -> Any:
    original = NodeView.snapshot

    async def snapshot(self: NodeView) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            return await original(self)
        finally:
            samples.append(time.perf_counter() - started)

    NodeView.snapshot = snapshot  # type: ignore[method-assign]
    return original


def audit_checks() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        with AuditLog(path) as log:
            for i in range(50_000):
                log.record("round", round=i, arrived=["a" * 26, "b" * 26], accuracy=0.5)
        data = path.read_bytes()
    lines = data.split(b"\n")
    print("\naudit chain check (verify_data), whole log:")
    for n in (1_000, 10_000, 50_000):
        blob = b"\n".join(lines[:n]) + b"\n"
        started = time.perf_counter()
        assert verify_data(blob).ok
        took = 1e3 * (time.perf_counter() - started)
        print(f"  {n:>6} lines ({len(blob) / 1e6:5.1f} MB): {took:7.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--pages", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    samples: list[float] = []
    timed_snapshots(samples)
    results: dict[int, list[float]] = {0: [], args.pages: []}
    snapshots = 0
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for pages in (0, args.pages):
                files = federation(Path(tmp) / f"r{repeat}-p{pages}", args.rounds)
                got = asyncio.run(run(files, pages))
                snapshots += got
                results[pages].append(seconds_per_round(files[0].directory / "checkpoints"))
    print(f"\n3 hospitals, secure, loopback ws, {args.rounds} rounds x {args.repeats}:")
    for pages, figures in results.items():
        shown = ", ".join(f"{1e3 * f:.0f}" for f in figures)
        print(f"  {pages} pages open: median ms per round {shown}")
    if samples:
        ms = sorted(1e3 * s for s in samples)
        print(
            f"  snapshots built {len(ms)}, received by the pages {snapshots}: "
            f"median {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms"
        )
    audit_checks()
    return 0


if __name__ == "__main__":
    sys.exit(main())
