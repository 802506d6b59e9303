"""Benchmark: the protocol engine on Fashion-MNIST (issue 3's first figure).

Eight nodes on a ring, each a real gossip core exchanging encoded bytes on the
virtual clock; three rounds of one local epoch of the MLP 784-256-128-10 on
8,000 training images split IID, batch 64. Prints the wall time of the rounds
(target: under 5 s on the project's 2-core machine) and the peak resident
memory of the whole process (target: under 600 MB).

    python simulations/bench/protocol_engine_bench.py [--nodes 8] [--rounds 3] ...

The data are loaded and torch.func is warmed up before the clock starts; the
federation is evaluated on the global test set only after the last round
(``eval.every`` = rounds).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch

from p2pfl.engines import prepare, run_engine
from p2pfl.scenario import scenario_from_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-samples", type=int, default=8000)
    p.add_argument("--topology", default="ring")
    p.add_argument("--mode", default="sync", choices=["sync", "choco", "async"])
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def scenario_table(args: argparse.Namespace) -> dict[str, object]:
    return {
        "name": "protocol-bench",
        "seed": args.seed,
        "engine": "protocol",
        "device": "cpu",
        "data": {
            "dataset": "fashion-mnist",
            "partition": "iid",
            "nodes": args.nodes,
            "max_train_samples": args.train_samples,
        },
        "model": {"name": "mlp", "hidden": [256, 128]},
        "training": {
            "rounds": args.rounds,
            "local_epochs": args.local_epochs,
            "batch_size": args.batch_size,
            "lr": 0.05,
        },
        "topology": {"kind": args.topology},
        "gossip": {"mode": args.mode},
        "eval": {"every": args.rounds},
    }


def warm_up() -> float:
    """Pay torch.func's one-time cost (its first ``grad`` imports torch._dynamo, 2-3 s here)
    before the clock starts, and report it: it is per process, not per round."""
    t0 = time.perf_counter()
    torch.func.grad(lambda x: (x * x).sum())(torch.ones(2))
    return time.perf_counter() - t0


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scenario = scenario_from_table(scenario_table(args), "protocol_engine_bench")
    t0 = time.perf_counter()
    setup = prepare(scenario)
    t_prepare = time.perf_counter() - t0
    steps = setup.schedule.steps_for(int(setup.data.nodes[0].x_train.shape[0]))
    print(
        f"protocol engine: {setup.n} nodes on a {setup.topo.kind}, {args.mode}, "
        f"{args.rounds} rounds x {args.local_epochs} epoch(s) (~{steps} steps of batch "
        f"{args.batch_size} per node and round), MLP with {setup.dim:,} parameters, "
        f"{args.train_samples:,} training images "
        f"({sum(int(nd.x_train.shape[0]) for nd in setup.data.nodes):,} after each node keeps "
        f"{scenario.data.test_fraction:.0%} as its own test split); "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"data and model prepared in {t_prepare:.2f} s (not counted)")
    print(f"torch.func warm-up    {warm_up():.2f} s (once per process, not counted)")
    t0 = time.perf_counter()
    result = run_engine("protocol", setup, "bench")
    wall = time.perf_counter() - t0
    rss = peak_rss_mb()
    last = result.rounds[-1]
    other = result.wall_total - result.wall_train - result.wall_eval
    print(
        f"rounds wall time      {wall:.2f} s   (target < 5 s)  "
        f"[train {result.wall_train:.2f} s, eval {result.wall_eval:.2f} s, "
        f"encode/decode/mix/scheduler {other:.2f} s]"
    )
    print(f"peak RSS              {rss:.0f} MB   (target < 600 MB)")
    print(
        f"final accuracy        mean {last.acc_mean:.4f} (min {last.acc_min:.4f}, "
        f"max {last.acc_max:.4f}); bytes sent per node per round "
        f"{last.bytes_per_node / 1e6:.2f} MB; virtual time {result.extra['virtual_time']:.3f} s"
    )
    ok = wall < 5.0 and rss < 600
    print("targets met" if ok else "targets NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
