"""Benchmark: the vectorized engine with 256 nodes on all of Fashion-MNIST (issue 3).

256 nodes, the MLP 784-256-128-10, a Dirichlet(alpha=0.5) split of all 60,000
training images, a ring, sync mode; by default 3 rounds of one local epoch
(``--local-steps N`` switches to a fixed N steps per node and round), batch 32.
The federation is evaluated once, after the last round. Prints:

- node-rounds per second (nodes x rounds / wall time of the run);
- the share of wall time spent outside local training, 1 - wall_train / wall_total
  (target: under 15%), with and without the final evaluation;
- the mixing step's effective bandwidth, the bytes X <- W X must move per round
  (read X and write the result: 2 x n x D x 4 bytes) over the measured mixing
  time, as a share of a plain copy of an (n, D) float32 tensor timed in the same
  process (target: at least 25%).

    python simulations/bench/vectorized_engine_bench.py [--nodes 256] [--rounds 3] ...
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import torch

from p2pfl.engines import prepare, run_engine
from p2pfl.scenario import scenario_from_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--local-steps", type=int, default=0, help="fixed steps instead of epochs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--topology", default="ring")
    p.add_argument("--test-samples", type=int, default=2000, help="global test set size")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--copies", type=int, default=5, help="timed repetitions of the plain copy")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def scenario_table(args: argparse.Namespace) -> dict[str, object]:
    training: dict[str, object] = {"rounds": args.rounds, "batch_size": args.batch_size, "lr": 0.05}
    if args.local_steps:
        training.update(local_steps=args.local_steps, local_epochs=0)
    else:
        training["local_epochs"] = args.local_epochs
    return {
        "name": "vectorized-bench",
        "seed": args.seed,
        "engine": "vectorized",
        "device": args.device,
        "data": {
            "dataset": "fashion-mnist",
            "partition": "dirichlet",
            "alpha": args.alpha,
            "nodes": args.nodes,
            "max_test_samples": args.test_samples,
        },
        "model": {"name": "mlp", "hidden": [256, 128]},
        "training": training,
        "topology": {"kind": args.topology},
        "eval": {"every": args.rounds},
    }


def copy_seconds(n: int, dim: int, device: torch.device, repeats: int) -> float:
    """Median time of ``dst.copy_(src)`` for (n, dim) float32 tensors, pages already touched."""
    src = torch.randn(n, dim, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scenario = scenario_from_table(scenario_table(args), "vectorized_engine_bench")
    t0 = time.perf_counter()
    setup = prepare(scenario)
    t_prepare = time.perf_counter() - t0
    n, dim = setup.n, setup.dim
    sizes = [int(nd.x_train.shape[0]) for nd in setup.data.nodes]
    steps = [setup.schedule.steps_for(s) for s in sizes]
    how = (
        f"{args.local_steps} local steps"
        if args.local_steps
        else f"{args.local_epochs} local epoch(s)"
    )
    print(
        f"vectorized engine on {setup.device}: {n} nodes on a {setup.topo.kind}, sync, "
        f"{args.rounds} rounds of {how}, batch {args.batch_size}; MLP with {dim:,} parameters; "
        f"Dirichlet(alpha={args.alpha}) over {sum(sizes):,} training images "
        f"(per node {min(sizes)}..{max(sizes)}, steps per round {min(steps)}..{max(steps)}, "
        f"{sum(steps):,} node-steps per round); torch threads {torch.get_num_threads()}"
    )
    print(f"data prepared in {t_prepare:.1f} s (not counted)")
    t0 = time.perf_counter()
    torch.func.grad(lambda x: (x * x).sum())(torch.ones(2))
    print(f"torch.func warm-up    {time.perf_counter() - t0:.2f} s (once per process, not counted)")

    t0 = time.perf_counter()
    result = run_engine("vectorized", setup, "bench")
    wall = time.perf_counter() - t0
    rounds = len(result.rounds)
    total = result.wall_total
    outside = 1 - result.wall_train / total
    loop = total - result.wall_eval
    outside_loop = 1 - result.wall_train / loop
    other = total - result.wall_train - result.wall_mix - result.wall_eval
    print(
        f"wall                  {wall:.2f} s: train {result.wall_train:.2f}, "
        f"mix {result.wall_mix:.2f}, final eval {result.wall_eval:.2f}, "
        f"other (consensus, records) {other:.2f}"
    )
    print(
        f"node-rounds per s     {n * rounds / wall:.1f} "
        f"({n * rounds / loop:.1f} without the final evaluation)"
    )
    print(
        f"outside training      {100 * outside:.1f}% of wall "
        f"({100 * outside_loop:.1f}% without the final evaluation)   (target < 15%)"
    )

    moved = 2 * n * dim * 4
    t_mix = result.wall_mix / rounds
    t_copy = copy_seconds(n, dim, setup.device, args.copies)
    bw_mix, bw_copy = moved / t_mix, moved / t_copy
    print(
        f"mixing bandwidth      {bw_mix / 1e9:.2f} GB/s ({t_mix * 1e3:.0f} ms per round, "
        f"{moved / 1e6:.0f} MB read+written); plain copy {bw_copy / 1e9:.2f} GB/s "
        f"({t_copy * 1e3:.0f} ms) -> {100 * bw_mix / bw_copy:.0f}% of a copy   (target >= 25%)"
    )
    last = result.rounds[-1]
    print(
        f"final accuracy        mean {last.acc_mean:.4f} (min {last.acc_min:.4f}, "
        f"max {last.acc_max:.4f}), consensus distance {last.consensus:.3g}"
    )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS              {rss:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
