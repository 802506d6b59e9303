"""Benchmark: the vectorized engine on a GPU, thousands of nodes (issue 3's GPU figure).

The CNN (~110k parameters) on Fashion-MNIST, split IID over all 60,000
training images; N nodes (``--nodes``, default 1,024) on a ring, sync mode,
100 rounds of 2 local steps of batch 32 per node, the federation evaluated
once after the last round. Prints the end-to-end wall time (data loading,
model, topology, training, mixing, evaluation) and its parts.

Targets from the issue, on an H100: 1,024 nodes in under 15 s and 10,000
nodes in under 3 minutes.

    python simulations/bench/gpu_engine_bench.py [--nodes 1024] [--rounds 100] ...
        [--cudnn-benchmark] [--profile K]

Without a GPU it says so and exits with status 0; ``--device cpu`` runs the
same workload on the CPU (for a smoke test with few nodes and rounds).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

from p2pfl.errors import P2PFLError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--local-steps", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--topology", default="ring")
    p.add_argument("--partition", default="iid", choices=["iid", "dirichlet", "classes"])
    p.add_argument("--test-fraction", type=float, default=0.2, help="each node's own test split")
    p.add_argument("--test-samples", type=int, default=1000, help="global test set size")
    p.add_argument("--eval-chunk", type=int, default=16, help="nodes per evaluation call")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN time its convolution algorithms first (torch.backends.cudnn.benchmark)",
    )
    p.add_argument(
        "--profile", type=int, default=0, metavar="K", help="print the K costliest ops (profiler)"
    )
    return p.parse_args(argv)


def scenario_table(args: argparse.Namespace) -> dict[str, object]:
    return {
        "name": "gpu-bench",
        "seed": args.seed,
        "engine": "vectorized",
        "device": args.device,
        "data": {
            "dataset": "fashion-mnist",
            "partition": args.partition,
            "nodes": args.nodes,
            "test_fraction": args.test_fraction,
            "max_test_samples": args.test_samples,
        },
        "model": {"name": "cnn"},
        "training": {
            "rounds": args.rounds,
            "local_epochs": 0,
            "local_steps": args.local_steps,
            "batch_size": args.batch_size,
            "lr": 0.05,
        },
        "topology": {"kind": args.topology},
        "eval": {"every": args.rounds, "chunk": args.eval_chunk},
    }


def _profiler(device: torch.device) -> torch.profiler.profile:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_engine_bench: no GPU visible to torch (torch.cuda.is_available() is False); "
            "nothing to measure. Run it where a GPU is lent, or pass --device cpu."
        )
        return 0

    from p2pfl.engines import prepare, run_engine
    from p2pfl.scenario import scenario_from_table

    try:
        scenario = scenario_from_table(scenario_table(args), "gpu_engine_bench")
        start = time.perf_counter()
        setup = prepare(scenario)
    except P2PFLError as exc:
        print(f"gpu_engine_bench: {exc}")
        return 2
    t_prepare = time.perf_counter() - start
    device = setup.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    sizes = [int(nd.x_train.shape[0]) for nd in setup.data.nodes]
    print(
        f"vectorized engine on {name}: {setup.n:,} nodes on a {setup.topo.kind}, sync, "
        f"{args.rounds} rounds of {args.local_steps} local steps of batch {args.batch_size}; "
        f"CNN with {setup.dim:,} parameters; {args.partition} split of {sum(sizes):,} training "
        f"images ({min(sizes)}..{max(sizes)} per node); global test set "
        f"{int(setup.data.y_global_test.shape[0]):,}; torch {torch.__version__}"
    )
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    profiler = _profiler(device) if args.profile else contextlib.nullcontext()
    t0 = time.perf_counter()
    try:
        with profiler as prof:
            result = run_engine("vectorized", setup, "gpu-bench")
            _sync(device)
    except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"gpu_engine_bench: the run failed after {time.perf_counter() - t0:.1f} s: {first}")
        return 1
    t_run = time.perf_counter() - t0
    if args.profile:
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=args.profile))
    total = time.perf_counter() - start
    other = result.wall_total - result.wall_train - result.wall_mix - result.wall_eval
    last = result.rounds[-1]
    print(
        f"end to end            {total:.2f} s  (prepare {t_prepare:.2f} s, run {t_run:.2f} s: "
        f"train {result.wall_train:.2f}, mix {result.wall_mix:.2f}, eval {result.wall_eval:.2f}, "
        f"other {other:.2f})"
    )
    print(
        f"throughput            {setup.n * args.rounds / t_run:,.0f} node-rounds/s, "
        f"{setup.n * args.rounds * args.local_steps / result.wall_train:,.0f} node-steps/s "
        f"in training"
    )
    print(
        f"final accuracy        mean {last.acc_mean:.4f} (min {last.acc_min:.4f}, "
        f"max {last.acc_max:.4f}), consensus distance {last.consensus:.3g}"
    )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"peak GPU memory       {peak:.2f} GiB allocated")
    target = 15.0 if setup.n <= 1024 else 180.0 if setup.n <= 10_000 else None
    if target is not None and device.type == "cuda":
        verdict = "met" if total < target else "NOT met"
        print(f"target                under {target:.0f} s for {setup.n:,} nodes: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
