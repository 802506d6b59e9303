"""A soak of node daemons under network faults: rounds, memory, descriptors, ledgers.

    PYTHONPATH=. python3 simulations/bench/soak_bench.py [--nodes 16] [--rounds 200]
        [--seed 0] [--out FILE.json] [--latency 0.005] [--jitter 0.005] [--bandwidth 20e6]
        [--resets-per-second 0.02] [--reset-on-round] [--warmup 20] [--round-timeout 60]
        [--timeout 7200] [--progress 10] [--keep DIR]

Nothing needs to be installed beyond the project's dependencies: the daemons
run as ``python -m p2pfl`` with ``PYTHONPATH`` set to this repository
(``simulations/bench/soak_harness.py``). ``--nodes`` daemons on loopback, one
torch thread each (``[limits] threads = 1``), train the heart-disease logistic
regression (``p2pfl.node.examples:heart_site``, the four hospitals in turn) for
``--rounds`` rounds, secure aggregation on a complete graph. Every daemon has a
``FaultProxy`` (``p2pfl.transport.faultproxy``) in front of its listener: the
ledger records the proxy's address (``[node] advertise``), so every link crosses
one, and each proxy, seeded, adds latency and jitter, caps bandwidth each way and
resets its connections at random (``--resets-per-second`` per connection);
``--reset-on-round`` also resets every connection whenever a daemon completes a
round. The federation is set up with ``local_federation`` as node_bench.py does,
in a temporary directory (``--keep DIR``: in DIR, kept with the daemons' logs).

While it runs it prints, every ``--progress`` seconds, the rounds the daemons
have completed (fewest, median, most) and an estimate of the time left. At the
end it prints, and with ``--out`` writes as JSON:

- rounds completed per node (its checkpoints), the rounds it lost (not
  completed), the rounds the audit log says it skipped or abandoned, and the
  most neighbours missing from any round against what the secure threshold
  allows (d - t); its slowest round;
- RSS (``/proc/PID/status`` VmRSS) and open descriptors (``/proc/PID/fd``) of
  each daemon, sampled while it runs, and their growth after round
  ``--warmup``: from the median of the first tenth of the samples to the median
  of the last tenth (a descriptor open for a moment during a reconnection is not
  growth), and to the highest sample; the CPU seconds each daemon used per round;
- the protocol faults each daemon counted against its neighbours and the bans
  they led to;
- whether every saved ledger (``p2pfl.ledger_file.load_ledger``) holds the same
  records (a hash of each), map by map, and the same state vector; whether
  every audit chain verifies;
- the wall time, and the floor in the same run: raw loopback TCP throughput
  and round-trip time direct and through a proxy without faults, and through a
  proxy with the soak's faults (resets aside);
- ``ok``: every round completed everywhere, no neighbour missing beyond d - t,
  no round skipped or abandoned, RSS and descriptors growing under 5 % after
  the warm-up, every ledger the same, every audit chain intact.

Measured on the 2-core development machine, shared with other work (load 17 to
21), default faults (5 ms + up to 5 ms latency, 20 MB/s each way, a reset per
connection every 50 s on average), 60 s secure timeouts, ``--warmup 10``:

- ``--nodes 4 --rounds 40``: 126 s wall, 11 connections reset; 40/40 rounds on
  every node, none skipped or abandoned, no neighbour missing (1 allowed),
  slowest round 4.3 s; RSS +0.1 to +0.3 %, descriptors +0 % (highest +16.7 %:
  one socket more during a reconnection, 12 -> 14); CPU 0.053 to 0.063 s per
  round per daemon; ledgers equal; ok.
- ``--nodes 8 --rounds 40``: 224.7 s wall, of which 113 s start-up (eight
  daemons importing torch on two busy cores) and 9 s linger; 61 connections
  reset; 40/40 rounds everywhere, no neighbour missing (3 allowed), slowest
  round 5.2 s; RSS +0.2 to +0.5 %, descriptors +0 % (highest +12.5 %); CPU
  0.078 to 0.087 s per round per daemon; ledgers equal; ok.
- ``--nodes 16 --rounds 200`` (defaults otherwise: ``--warmup 20``, 60 s
  timeouts), load 15.6 at the start: 435.1 s wall (about 50 s start-up, then
  about 1.9 s per round); 867 connections reset, 717 MB proxied; 200/200
  rounds on every node, none skipped or abandoned, no neighbour missing (7
  allowed), slowest round 4.8 to 6.9 s; RSS +2.0 to +3.1 % (highest +3.1 %),
  descriptors +0 % (highest +8.3 %: two sockets more during a reconnection); CPU 0.115
  to 0.124 s per round per daemon; harness 37.1 s of CPU; ledgers equal; ok.
- Before the replay fix (a round's frames were dropped once this node's round
  ended), ``6 x 20`` with 0.2 resets per second per connection and 20 s
  timeouts: every node had rounds with a neighbour declared dropped after a
  20 s wait; after it, the same run had none. The 16-daemon stalls of about
  61 s had that cause, and lasted 60 s because this script did not pass
  ``--round-timeout`` on.

16 x 200 on 16 free cores, estimated from these (not measured): CPU per daemon
per round grew from 0.058 s (3 neighbours) to 0.083 s (7); extrapolated to 15
neighbours, 0.13 s (linear) to 0.19 s (quadratic), so 30 to 40 s of CPU per
daemon for 200 rounds on its own core, plus the latency chain of a secure round
(five message hops through a proxy, 5 to 10 ms each: about 10 s over 200
rounds), start-up (seconds on idle cores) and linger (about 10 s): roughly 1.5
to 3 minutes, inside 9. This process forwards every link through its proxies,
on one core: ``--nodes 8 --rounds 30`` cost it 2.0 s of CPU (0.067 s per round,
``harness_cpu_s`` in the JSON); with 4.3 times the links at 16, about 0.29 s per
round, about 1 minute over 200 rounds, a floor under the round time rather than
a limit on the whole run. That 8 x 30 took 123 s wall here: about 60 s
start-up, 32 s of rounds, then 31 s from the last round to the last exit (the
linger waits for every neighbour's last progress record; not explained yet).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from p2pfl.transport.faultproxy import FaultProxy, LinkFaults  # noqa: E402
from simulations.bench.soak_harness import (  # noqa: E402
    Result,
    Settings,
    cpu_per_round,
    growth,
    soak,
    training,
)

MB = 1_000_000


# -- the floor ----------------------------------------------------------------------------------


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo small messages, swallow bulk: answers ``b"k"`` at the end of stream."""
    with contextlib.suppress(OSError):
        while data := await reader.read(1 << 16):
            if len(data) == 4:
                writer.write(data)
                await writer.drain()
        writer.write(b"k")
        await writer.drain()
    writer.close()


async def _measure(port: int, size: int) -> tuple[float, float]:
    """(MB/s of ``size`` bytes one way, median RTT seconds of 4-byte pings) to ``port``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rtts = []
    for _ in range(20):
        t = time.perf_counter()
        writer.write(b"ping")
        await writer.drain()
        await reader.readexactly(4)
        rtts.append(time.perf_counter() - t)
    block = bytes(1 << 20)
    t = time.perf_counter()
    for _ in range(size // len(block)):
        writer.write(block)
        await writer.drain()
    writer.write_eof()
    await reader.readexactly(1)
    rate = size / (time.perf_counter() - t) / MB
    writer.close()
    return rate, statistics.median(rtts)


async def floor_async(faults: LinkFaults, size: int = 64 << 20) -> dict[str, tuple[float, float]]:
    server = await asyncio.start_server(_sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    figures = {"direct": await _measure(port, size)}
    async with FaultProxy(("127.0.0.1", port)) as plain:
        figures["proxy, no faults"] = await _measure(plain.port, size)
    slow = LinkFaults(faults.latency, faults.jitter, faults.bandwidth, faults.burst)
    async with FaultProxy(("127.0.0.1", port), slow) as faulty:
        bulk = int(min(size, faults.bandwidth * 2)) if faults.bandwidth else size
        figures["proxy, soak faults (no resets)"] = await _measure(faulty.port, max(bulk, 1 << 20))
    server.close()
    await server.wait_closed()
    return figures


# -- the report ---------------------------------------------------------------------------------

GROWTH_LIMIT = 0.05  # RSS and descriptors after the warm-up


def figures(
    result: Result, floor: dict[str, tuple[float, float]], harness_cpu: float
) -> dict[str, Any]:
    """What the run measured, as the JSON ``--out`` writes (and ``report`` prints)."""
    s = result.settings
    nodes = []
    for node in result.nodes:
        kept = training(node.samples, s.warmup, s.rounds)
        rss, fds = growth(kept, "rss"), growth(kept, "fds")
        nodes.append(
            {
                "name": node.name,
                "exit": node.returncode,
                "rounds_completed": len(node.completed),
                "rounds_lost": s.rounds - len(node.completed),
                "skipped_or_abandoned": len(node.skipped),
                "receiver_abandoned": node.abandoned,
                "most_missing_neighbours": node.stragglers,
                "slowest_round_s": round(node.slowest, 3),
                "audit_intact": node.audit_intact,
                "peer_faults": node.peer_faults,
                "bans": node.banned,
                "rss_first_mb": kept[0].rss / MB if kept else None,
                "rss_last_mb": kept[-1].rss / MB if kept else None,
                "rss_growth_end": None if rss is None else rss[0],
                "rss_growth_highest": None if rss is None else rss[1],
                "fds_first": kept[0].fds if kept else None,
                "fds_last": kept[-1].fds if kept else None,
                "fds_growth_end": None if fds is None else fds[0],
                "fds_growth_highest": None if fds is None else fds[1],
                "samples_after_warmup": len(kept),
                "cpu_s_per_round": cpu_per_round(kept),
            }
        )
    ok = (
        all(n["rounds_lost"] == 0 and n["exit"] == 0 for n in nodes)
        and all(n["most_missing_neighbours"] <= result.tolerance for n in nodes)
        and all(n["skipped_or_abandoned"] == 0 and n["receiver_abandoned"] == 0 for n in nodes)
        and all(n["audit_intact"] for n in nodes)
        and all(
            n["rss_growth_end"] is not None
            and n["rss_growth_end"] < GROWTH_LIMIT
            and n["fds_growth_end"] < GROWTH_LIMIT
            for n in nodes
        )
        and result.records_converged
        and result.state_vectors_converged
    )
    return {
        "settings": {**asdict(s), "faults": asdict(s.faults)},
        "machine": {
            "cores": os.cpu_count(),
            "load_at_end": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "wall_s": round(result.wall, 1),
        "harness_cpu_s": round(harness_cpu, 1),  # the proxies and the sampling, floor aside
        "allowed_missing_neighbours": result.tolerance,
        "connections_reset": result.resets,
        "proxied_mb": result.proxied_bytes / MB,
        "nodes": nodes,
        "ledger_records_converged": result.records_converged,
        "ledger_state_vectors_equal": result.state_vectors_converged,
        "ledger_record_hashes": result.ledger_hashes,
        "ledger_record_hashes_equal": len(set(result.ledger_hashes)) == 1,
        "floor": {k: {"mb_per_s": rate, "rtt_ms": rtt * 1e3} for k, (rate, rtt) in floor.items()},
        "growth_limit": GROWTH_LIMIT,
        "ok": ok,
    }


def report(result: Result, shown: dict[str, Any]) -> None:
    s = result.settings
    print(
        f"{s.nodes} daemons x {s.rounds} rounds, secure, complete graph; faults {s.faults}"
        f"{', reset on every round' if s.reset_on_round else ''}; wall {result.wall:.1f} s; "
        f"proxies reset {result.resets} connections, forwarded {result.proxied_bytes / MB:.1f} MB"
    )
    for n in shown["nodes"]:
        rss = (
            f"RSS {n['rss_first_mb']:.0f} -> {n['rss_last_mb']:.0f} MB "
            f"(end {n['rss_growth_end']:+.1%}, highest {n['rss_growth_highest']:+.1%})"
            if n["rss_growth_end"] is not None
            else "RSS: too few samples after warm-up"
        )
        fds = (
            f"fds {n['fds_first']} -> {n['fds_last']} "
            f"(end {n['fds_growth_end']:+.1%}, highest {n['fds_growth_highest']:+.1%})"
            if n["fds_growth_end"] is not None
            else "fds: too few samples"
        )
        print(
            f"  {n['name']}: exit {n['exit']}, {n['rounds_completed']}/{s.rounds} rounds "
            f"(lost {n['rounds_lost']}), skipped/abandoned records {n['skipped_or_abandoned']}, "
            f"receiver abandoned {n['receiver_abandoned']}, most missing neighbours "
            f"{n['most_missing_neighbours']} (allowed {result.tolerance}), slowest round "
            f"{n['slowest_round_s']:.1f} s; audit {'intact' if n['audit_intact'] else 'BROKEN'}; "
            f"peer faults {n['peer_faults']}, bans {n['bans']}; {rss}; {fds}; "
            f"{n['samples_after_warmup']} samples in rounds {s.warmup}..{s.rounds - 1}, "
            f"CPU {n['cpu_s_per_round'] or 0:.3f} s per round"
        )
    print(
        f"ledgers: records converged {result.records_converged}, state vectors equal "
        f"{result.state_vectors_converged}, record hashes equal "
        f"{shown['ledger_record_hashes_equal']} ({result.ledger_hashes[0][:16]}...)"
    )
    print(
        f"harness (proxies, sampling) CPU {shown['harness_cpu_s']:.1f} s; "
        f"ok: {shown['ok']} (growth limit {GROWTH_LIMIT:.0%})"
    )


class Progress:
    """Prints the rounds done every ``every`` seconds, with a guess at the time left."""

    def __init__(self, rounds: int, every: float) -> None:
        self.rounds, self.every = rounds, every
        self.shown = -math.inf
        self.first: tuple[float, int] | None = None  # (seconds, fewest rounds) at round 1

    def __call__(self, at: float, latest: list[int]) -> None:
        fewest = min(latest)
        if self.first is None and fewest >= 1:
            self.first = (at, fewest)
        if at - self.shown < self.every:
            return
        self.shown = at
        left = ""
        if self.first is not None and fewest > self.first[1]:
            rate = (fewest - self.first[1]) / (at - self.first[0])
            left = f", about {(self.rounds - fewest) / rate:.0f} s left"
        print(
            f"[{at:6.0f} s] rounds completed: fewest {max(fewest, 0)}, median "
            f"{max(int(statistics.median(latest)), 0)}, most {max(max(latest), 0)} of "
            f"{self.rounds}{left}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--latency", type=float, default=0.005)
    parser.add_argument("--jitter", type=float, default=0.005)
    parser.add_argument("--bandwidth", type=float, default=20e6)
    parser.add_argument("--resets-per-second", type=float, default=0.02)
    parser.add_argument("--reset-on-round", action="store_true")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--round-timeout", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=7200.0)
    parser.add_argument("--progress", type=float, default=10.0, help="seconds between lines")
    parser.add_argument("--keep", type=Path, help="run in this (new) directory and keep it")
    args = parser.parse_args()
    faults = LinkFaults(
        latency=args.latency,
        jitter=args.jitter,
        bandwidth=args.bandwidth,
        resets_per_second=args.resets_per_second,
    )
    settings = Settings(
        args.nodes,
        args.rounds,
        args.seed,
        faults,
        args.warmup,
        timeout=args.timeout,
        round_timeout=args.round_timeout,
        reset_on_round=args.reset_on_round,
    )
    print(f"soak bench on {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
    floor = asyncio.run(floor_async(faults))
    for name, (rate, rtt) in floor.items():
        print(f"floor, {name}: {rate:.0f} MB/s one way, median RTT {rtt * 1e3:.2f} ms")
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True)
            root = args.keep
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="p2pfl-soak-")))
        cpu = sum(os.times()[:2])
        result = soak(root, settings, Progress(settings.rounds, args.progress))
        shown = figures(result, floor, sum(os.times()[:2]) - cpu)
        report(result, shown)
        for node in result.nodes:
            if node.returncode != 0:
                print(f"--- {node.name} log tail ---\n{node.log_tail}")
    if args.out is not None:
        args.out.write_text(json.dumps(shown, indent=2) + "\n")
        print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
