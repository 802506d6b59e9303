"""Node daemons on loopback: model throughput over ws and wss, peak memory, time per round.

    python simulations/bench/node_bench.py [--size-mb 100] [--rounds 4]
        [--engine-rounds 10] [--skip-transfer] [--skip-engines]

1. Throughput. Two ``p2pfl node run`` processes (a two-site federation, plain
   sync gossip) whose plan's model is an MLP of about ``--size-mb`` MB of
   float32 parameters; each round every daemon sends its whole model to the
   other and receives the other's. Two figures per round and daemon, from
   the checkpoints' metadata:

   - wire: what the daemons' data plane moves between them. Received: model
     bytes / the time from the first fragment of the neighbour's model to its
     last, copied into the message buffer (``recv_wire_bytes`` /
     ``recv_wire_seconds``); sent: model bytes / the time the send call took,
     until the last fragment was handed to the socket (``sent_wire_*``).
     The websocket transport records both (``p2pfl.transport.transfers``).
     This is the figure the targets are about. The two daemons usually
     finish training at different times, so a transfer may overlap the
     other daemon's training or the reverse transfer, or neither: the
     spread between rounds is mostly that.
   - round exchange incl. waiting for the neighbour's training: bytes sent /
     the time from handing the model to the link until the neighbour's model
     has arrived and been mixed (``mix_seconds``). Both daemons train at once
     on the same cores, so this mostly measures how much later the
     neighbour finished training (skew), not the wire; it also includes
     framing, the channel tag, decoding and the mix itself.

   Both ends send at once, so each figure is one direction of a full-duplex
   exchange. Round 0 (torch warm-up, links settling) is left out; best and
   median are shown. Run over ws (``--insecure``) and over wss (TLS 1.3);
   raw loopback TCP between two processes is measured right before and after
   each, with the load average, as the machine's reference at that moment.
2. Memory. The daemons' peak RSS (``getrusage``) against the model size, and
   against the peak RSS of the same daemons with a logistic regression
   (the baseline: Python, torch, websockets, the ledger).
3. Time per round of ``p2pfl simulate --engine processes`` against
   ``--engine protocol`` on the same scenario (the four heart-disease
   hospitals, complete graph, plain and secure): median wall seconds per
   round over rounds 2..N (the protocol engine's is real time for all four
   simulated nodes in one process; the processes engine's is real time of
   four daemons on this machine's cores).

Targets (issue 6): a 100 MB model between two daemons on loopback (the
wire figure) ws >= 1.5 GB/s and wss >= 0.8 GB/s; peak RSS under
baseline + 3x model. This machine has 2 shared cores: figures are reported,
not asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from p2pfl.engines import prepare, run_engine  # noqa: E402
from p2pfl.engines.processes import free_ports  # noqa: E402
from p2pfl.node.bootstrap import Site, local_federation  # noqa: E402
from p2pfl.node.checkpoint import list_checkpoints, read_checkpoint  # noqa: E402
from p2pfl.node.status import read_status  # noqa: E402
from p2pfl.scenario import load_scenario  # noqa: E402
from simulations.bench.transport_bench import tcp_baseline  # noqa: E402

MB = 1_000_000
FEATURES = 37  # the heart-disease data the two sites train on
RECV = ("recv_wire_bytes", "recv_wire_seconds")  # the figures' checkpoint keys (docstring)
SENT = ("sent_wire_bytes", "sent_wire_seconds")
EXCHANGE = ("bytes_sent", "mix_seconds")


def hidden_for(size_mb: float) -> int:
    """Width H of an MLP 37 -> H -> H -> 2 with about ``size_mb`` MB of float32 parameters."""
    params = size_mb * MB / 4
    # H*H + (37 + 1 + 1 + 2) * H + 2 = params
    b = FEATURES + 4
    return max(2, int((-b + math.sqrt(b * b + 4 * (params - 2))) / 2))


def plan(model: dict[str, Any], rounds: int) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {"input_shape": [FEATURES], "num_classes": 2},
        "model": model,
        "training": {"rounds": rounds, "local_steps": 1, "batch_size": 32, "lr": 0.01},
        "topology": {"kind": "complete"},
        "gossip": {"mode": "sync", "round_timeout": 600.0},
    }


def two_daemons(scheme: str, model: dict[str, Any], rounds: int) -> dict[str, Any]:
    """Run two daemons to the end; their checkpoints' metadata and their peak RSS."""
    with tempfile.TemporaryDirectory(prefix="p2pfl-node-bench-") as tmp:
        ports = free_ports(2)
        sites = [
            Site(
                name,
                f"{scheme}://127.0.0.1:{port}",
                "p2pfl.node.examples:heart_site",
                [site],
                limits={"max_message_size": 1 << 30, "keep_checkpoints": 0, "threads": 1},
            )
            for name, site, port in zip(("a", "b"), ("Cleveland", "Hungary"), ports, strict=True)
        ]
        files = local_federation(tmp, sites, plan(model, rounds), tls=scheme == "wss")
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        extra = ["--insecure"] if scheme == "ws" else []
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "p2pfl", "node", "run", "--config", str(f.config), *extra],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for f in files
        ]
        logs = [p.communicate(timeout=1800)[1] for p in procs]
        for proc, log in zip(procs, logs, strict=True):
            if proc.returncode != 0:
                raise SystemExit(f"a daemon failed ({proc.returncode}):\n{log[-3000:]}")
        metas = []
        for f in files:
            for _, path in list_checkpoints(f.directory / "checkpoints"):
                metas.append(read_checkpoint(path).meta)
        rss = [read_status(f.directory)["peak_rss_bytes"] for f in files]
        dim = read_checkpoint(list_checkpoints(files[0].directory / "checkpoints")[0][1]).model
        return {"metas": metas, "rss": rss, "model_bytes": int(dim.nbytes)}


def raw_tcp(size_mb: float) -> str:
    """Raw loopback TCP between two processes now, measured as transport_bench does."""
    timings = tcp_baseline(argparse.Namespace(size_mb=int(size_mb), repeat=3))
    rates = [int(size_mb) * MB / wall / 1e9 for wall in timings.wall]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"raw TCP reference: best {max(rates):.2f} GB/s, median {statistics.median(rates):.2f}"
        f" GB/s (load average {load})"
    )


def rates(metas: list[dict[str, Any]], size_key: str, time_key: str) -> str:
    """Best and median GB/s of ``meta[size_key] / meta[time_key]`` over rounds and daemons."""
    found = [
        m[size_key] / m[time_key] / 1e9
        for m in metas
        if m.get(time_key, 0) > 0 and m.get(size_key, 0) > 0
    ]
    if not found:
        return "not recorded"
    listed = " ".join(f"{r:.2f}" for r in found)
    return (
        f"best {max(found):.3f} GB/s, median {statistics.median(found):.3f} GB/s "
        f"({len(found)} samples: {listed})"
    )


def transfer(size_mb: float, rounds: int) -> None:
    width = hidden_for(size_mb)
    print(f"model: MLP 37-{width}-{width}-2, {size_mb:.0f} MB of float32; {rounds} rounds")
    baseline = two_daemons("ws", {"name": "logreg"}, 2)["rss"]
    base = max(baseline)
    shown = ", ".join(f"{r / MB:.0f} MB" for r in baseline)
    print(f"baseline peak RSS (logistic regression daemons): {shown}")
    for scheme in ("ws", "wss"):
        print(f"     before: {raw_tcp(size_mb)}")
        t0 = time.perf_counter()
        run = two_daemons(scheme, {"name": "mlp", "hidden": [width, width]}, rounds)
        model = run["model_bytes"]
        metas = [m for m in run["metas"] if m["round"] >= 2]  # round 1 warms up
        target = 1.5 if scheme == "ws" else 0.8
        print(
            f"{scheme:>3}: model {model / MB:.1f} MB per round each way "
            f"(target on the wire {target} GB/s; run {time.perf_counter() - t0:.0f} s)"
        )
        print(f"     wire, received (first to last fragment): {rates(metas, *RECV)}")
        print(f"     wire, sent (the send call):               {rates(metas, *SENT)}")
        print(
            "     round exchange incl. waiting for the neighbour's training: "
            f"{rates(metas, *EXCHANGE)}"
        )
        for i, rss in enumerate(run["rss"]):
            over = (rss - base) / model
            print(
                f"     daemon {i}: peak RSS {rss / MB:.0f} MB = baseline {base / MB:.0f} MB "
                f"+ {over:.2f} x model (target < 3 x)"
            )
        print(f"     after:  {raw_tcp(size_mb)}")


def engines(rounds: int) -> None:
    for secure in (False, True):
        scenario = load_scenario(
            ROOT / "simulations" / "hospitals.toml",
            {
                "topology.kind": "complete",
                "secure.enabled": secure,
                "training.rounds": rounds,
                "secure.share_timeout": 120.0,
                "secure.masked_timeout": 60.0,
            },
        )
        setup = prepare(dataclasses.replace(scenario, sweep={}))
        figures = {}
        for engine in ("protocol", "processes"):
            t0 = time.perf_counter()
            result = run_engine(engine, setup, engine)
            total = time.perf_counter() - t0
            walls = [r.wall for r in result.rounds[1:]]
            figures[engine] = (statistics.median(walls), total, result.rounds[-1].acc_mean)
        mode = "secure" if secure else "plain "
        (p_round, p_total, p_acc), (d_round, d_total, d_acc) = (
            figures["protocol"],
            figures["processes"],
        )
        print(
            f"hospitals {mode} {rounds} rounds: per round protocol {p_round * 1000:.0f} ms, "
            f"processes {d_round * 1000:.0f} ms ({d_round / p_round:.2f}x); "
            f"whole run {p_total:.1f} s vs {d_total:.1f} s (process start-up included); "
            f"accuracy {p_acc:.4f} vs {d_acc:.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=100.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--engine-rounds", type=int, default=10)
    parser.add_argument("--skip-transfer", action="store_true")
    parser.add_argument("--skip-engines", action="store_true")
    args = parser.parse_args()
    print(f"node bench on {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    if not args.skip_transfer:
        transfer(args.size_mb, args.rounds)
    if not args.skip_engines:
        engines(args.engine_rounds)


if __name__ == "__main__":
    main()
