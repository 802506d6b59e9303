"""CHOCO compression in the daemon: bytes on the wire per round against what it promises.

    python simulations/bench/compression_bench.py [--params 1000000] [--rounds 3]

Three heart-disease sites (``p2pfl.Peer`` daemons on the in-memory transport,
complete graph) train an MLP of about ``--params`` parameters; once with plain
D-PSGD frames (``gossip.mode = "sync"``) and once per compressor of
``gossip.mode = "choco"``. For each it prints a round's bytes sent per node (the
frames the round core sent: what reaches the transport, without the channel
tag; median over nodes and rounds), the reduction against the dense run, the
reduction the compressor promises (32/bits for bit-packed quantization, 1/(2 x
fraction) for top-k's float32 value and uint32 index per kept entry), and the
achieved share of that promise. The mean final accuracy is shown beside it, so
that a compressor that "saves" bytes by not learning stands out.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import p2pfl
from p2pfl.node.bootstrap import Site, local_federation
from p2pfl.node.config import load_config
from p2pfl.node.events import RoundCompleted
from p2pfl.transport import MemoryNetwork

SITES = ("Cleveland", "Hungary", "Switzerland")
FEATURES = 37
CASES: list[tuple[str, dict[str, Any], float]] = [
    ("dense (sync)", {"mode": "sync"}, 1.0),
    ("quantize 8 bits", {"mode": "choco", "compression": "quantize", "bits": 8}, 32 / 8),
    ("quantize 4 bits", {"mode": "choco", "compression": "quantize", "bits": 4}, 32 / 4),
    ("quantize 2 bits", {"mode": "choco", "compression": "quantize", "bits": 2}, 32 / 2),
    ("top-k 10%", {"mode": "choco", "compression": "topk", "topk_fraction": 0.1}, 1 / 0.2),
    ("top-k 1%", {"mode": "choco", "compression": "topk", "topk_fraction": 0.01}, 1 / 0.02),
]


def _plan(hidden: int, rounds: int, gossip: dict[str, Any]) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {"input_shape": [FEATURES], "num_classes": 2},
        "model": {"name": "mlp", "hidden": [hidden]},
        "training": {"rounds": rounds, "local_epochs": 1, "batch_size": 32, "lr": 0.05},
        "topology": {"kind": "complete"},
        "gossip": {"round_timeout": 300.0, **gossip},
    }


def _run(root: Path, plan: dict[str, Any]) -> tuple[list[int], list[float], float]:
    sites = [
        Site(s.lower(), f"memory://{s.lower()}", "p2pfl.node.examples:heart_site", [s])
        for s in SITES
    ]
    files = local_federation(root, sites, plan, tls=False)
    network = MemoryNetwork()
    done: list[list[RoundCompleted]] = [[] for _ in files]

    async def one(i: int) -> None:
        async with p2pfl.Peer(load_config(files[i].config), network=network) as peer:

            async def watch() -> None:
                async for event in peer.events():
                    if isinstance(event, RoundCompleted):
                        done[i].append(event)

            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(watch())
                await peer.run()

    async def every() -> None:
        async with asyncio.timeout(1800):
            await asyncio.gather(*(one(i) for i in range(len(files))))

    t0 = time.perf_counter()
    asyncio.run(every())
    wall = time.perf_counter() - t0
    sent = [e.bytes_sent for events in done for e in events]
    final = [events[-1].accuracy for events in done if events and events[-1].accuracy is not None]
    return sent, [float(a) for a in final], wall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", type=int, default=1_000_000, help="MLP size (approximate)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    hidden = max(1, (args.params - 2) // (FEATURES + 3))
    params = FEATURES * hidden + hidden + hidden * 2 + 2
    print(
        f"compression_bench: 3 sites, complete graph, MLP {FEATURES}-{hidden}-2 "
        f"({params:,} parameters, {4 * params / 1e6:.2f} MB float32), {args.rounds} rounds"
    )
    print(
        f"{'compressor':18} {'bytes/round/node':>17} {'reduction':>10} {'promised':>9} "
        f"{'achieved':>9} {'accuracy':>9} {'wall s':>7}"
    )
    dense_bytes = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, gossip, promised) in enumerate(CASES):
            sent, acc, wall = _run(Path(tmp) / str(i), _plan(hidden, args.rounds, gossip))
            median = statistics.median(sent)
            dense_bytes = dense_bytes or median
            reduction = dense_bytes / median
            mean_acc = statistics.fmean(acc) if acc else float("nan")
            print(
                f"{name:18} {median:17,.0f} {reduction:9.2f}x {promised:8.1f}x "
                f"{reduction / promised:8.0%} {mean_acc:9.3f} {wall:7.1f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
