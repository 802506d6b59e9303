"""Benchmark: the vectorized engine sharded over 1, 2 (and 4) gloo ranks on this machine.

1,024 small nodes by default: logistic regression on Fashion-MNIST (7,850
parameters), 32 training images per node (IID), a fixed number of local steps,
sync mode on a ring (``--topology regular`` for a random 4-regular graph, cut by
Kernighan-Lin), ``--threads`` torch threads per rank (default 1). The
single-process engine runs first in this process; then each world size runs as
that many processes of this script (``--worker``), started with the torchrun
variables on 127.0.0.1. Prints, per world size: the mean time per round (the
first round, which pays torch.func's warm-up, is left out), its ratio to the
single-process engine, the partition's cut edges and the bytes the ranks sent
each other per round (counted from the tensors handed to ``all_to_all_single``),
and that the final parameters match the single-process run.

    python simulations/bench/sharded_engine_bench.py [--nodes 1024] [--ranks 1 2 4] ...
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from p2pfl.engines import prepare, run_engine
from p2pfl.engines.common import RunResult
from p2pfl.scenario import scenario_from_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--samples", type=int, default=32, help="training images per node")
    p.add_argument("--local-steps", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--topology", default="ring")
    p.add_argument("--mode", default="sync", choices=["sync", "choco", "async"])
    p.add_argument("--secure", action="store_true")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per world size")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def scenario_table(args: argparse.Namespace) -> dict[str, object]:
    return {
        "name": "sharded-bench",
        "seed": 0,
        "engine": "vectorized",
        "device": "cpu",
        "data": {
            "dataset": "fashion-mnist",
            "partition": "iid",
            "nodes": args.nodes,
            "max_train_samples": args.nodes * args.samples,
            "max_test_samples": 1000,
        },
        "model": {"name": "logreg"},
        "training": {
            "rounds": args.rounds,
            "local_steps": args.local_steps,
            "local_epochs": 0,
            "batch_size": args.batch_size,
            "lr": 0.05,
        },
        "topology": {"kind": args.topology},
        "gossip": {"mode": args.mode},
        "secure": {"enabled": args.secure},
        "eval": {"every": args.rounds},
    }


def per_round(result: RunResult) -> float:
    walls = [r.wall for r in result.rounds[1:]] or [result.rounds[0].wall]
    return statistics.mean(walls)


def worker(args: argparse.Namespace) -> int:
    """One rank: run the scenario sharded; rank 0 writes its figures to ``--worker``."""
    from p2pfl.engines import sharded
    from p2pfl.engines.world import join, leave, placement

    torch.set_num_threads(args.threads)
    where = placement(os.environ)
    assert where is not None
    world = join(where, "cpu")
    try:
        setup = prepare(scenario_from_table(scenario_table(args), "sharded_engine_bench"))
        result = sharded.run(setup, "bench", world)
        if result is not None:
            torch.save(result.final_params, args.worker.with_suffix(".pt"))
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            figures = {"per_round": per_round(result), "rss_mb": rss, **result.extra["sharded"]}
            args.worker.write_text(json.dumps(figures))
    finally:
        leave()
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(args: argparse.Namespace, ranks: int, out: Path, argv: list[str]) -> dict[str, object]:
    env = dict(os.environ)
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        WORLD_SIZE=str(ranks),
        GLOO_SOCKET_IFNAME="lo",
        OMP_NUM_THREADS=str(args.threads),
    )
    command = [sys.executable, __file__, *argv, "--worker", str(out)]
    procs = [
        subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
        for r in range(ranks)
    ]
    deadline = time.monotonic() + args.timeout
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    if any(p.returncode for p in procs):
        raise SystemExit(f"{ranks} ranks: a rank failed ({[p.returncode for p in procs]})")
    figures: dict[str, object] = json.loads(out.read_text())
    return figures


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker is not None:
        return worker(args)
    torch.set_num_threads(args.threads)
    setup = prepare(scenario_from_table(scenario_table(args), "sharded_engine_bench"))
    mode = args.mode + (" secure" if args.secure else "")
    print(
        f"{setup.n} nodes, logreg ({setup.dim:,} parameters), {args.samples} images each, "
        f"{args.local_steps} local steps of batch {args.batch_size}, {mode} on a "
        f"{setup.topo.kind}, {args.rounds} rounds (first left out); "
        f"{args.threads} torch thread(s) per process, {os.cpu_count()} cores"
    )
    single = run_engine("vectorized", setup, "single")
    base = per_round(single)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{'engine':<22} {'s/round':>8} {'x single':>9} {'cut edges':>10} {'MB/round':>9} "
        f"{'rank 0 RSS MB':>13}  match"
    )
    print(f"{'single process':<22} {base:8.3f} {1.0:9.2f} {'-':>10} {'-':>9} {rss:13.0f}  -")
    worker_argv = [a for a in argv if a != "--worker"]
    with tempfile.TemporaryDirectory() as tmp:
        for ranks in args.ranks:
            out = Path(tmp) / f"ranks-{ranks}.json"
            f = launch(args, ranks, out, worker_argv)
            final = torch.load(out.with_suffix(".pt"))
            gap = float((final - single.final_params).norm() / single.final_params.norm())
            name = f"sharded, {ranks} gloo rank" + ("s" if ranks > 1 else "")
            t = float(f["per_round"])  # type: ignore[arg-type]
            print(
                f"{name:<22} {t:8.3f} {t / base:9.2f} {f['cut_edges']:>10} "
                f"{float(f['rank_bytes_per_round']) / 1e6:9.3f} "  # type: ignore[arg-type]
                f"{float(f['rss_mb']):13.0f}  {gap:.1e} ({f['partition']})"  # type: ignore[arg-type]
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
