"""Time the topology lab at scale: a 10,000-node random 8-regular graph, end to end.

Steps timed (wall clock, best of ``--repeat`` runs):

1. graph: a connected random d-regular graph (vectorised configuration model);
2. weights: its Metropolis-Hastings mixing matrix (sparse, numpy-vectorised);
3. gap: the spectral gap 1 - |lambda_2| (Lanczos on a LinearOperator with the
   consensus direction projected out);

then the same through the public API (``topology.build`` + ``spectral_gap``),
and, as a cross-check, a ring of the same size against its closed form
``1 - (1/3 + 2/3 cos(2 pi / n))`` (computed by FFT, the ring being circulant).

    python simulations/bench/topology_bench.py [--nodes 10000] [--degree 8]

It prints figures; it asserts nothing. The target is a total under one second.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--degree", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n, d = args.nodes, args.degree

    _, import_s = timed(lambda: __import__("topology.families") and __import__("topology.analysis"))
    from topology import build, spectral_gap
    from topology.random_graphs import connected_regular
    from topology.weights import symmetric_weights

    print(f"random {d}-regular graph on {n} nodes, Metropolis weights, seed {args.seed}")
    print(f"  import topology (numpy, scipy): {import_s * 1e3:8.1f} ms (once, not in the total)")
    runs: list[tuple[float, float, float]] = []
    gaps = []
    for r in range(args.repeat):
        t0 = time.perf_counter()
        edges = connected_regular(n, d, args.seed + r)
        t1 = time.perf_counter()
        w = symmetric_weights(n, edges, "metropolis")
        t2 = time.perf_counter()
        gaps.append(spectral_gap(w))
        t3 = time.perf_counter()
        runs.append((t1 - t0, t2 - t1, t3 - t2))
    best = min(runs, key=sum)
    median_total = statistics.median(sum(run) for run in runs)
    print(f"  graph   {best[0] * 1e3:8.1f} ms   ({len(edges)} edges)")
    print(f"  weights {best[1] * 1e3:8.1f} ms   ({w.nnz} nonzeros)")
    print(f"  gap     {best[2] * 1e3:8.1f} ms   (gap {gaps[runs.index(best)]:.6f})")
    print(f"  total   {sum(best) * 1e3:8.1f} ms   (best of {args.repeat})")
    print(f"  median total {median_total * 1e3:.1f} ms; worst {max(map(sum, runs)) * 1e3:.1f} ms")
    ramanujan = 1 - (1 + 2 * math.sqrt(d - 1)) / (d + 1)
    print(f"  (a Ramanujan {d}-regular graph would have gap {ramanujan:.6f})")

    topo, t_build = timed(lambda: build("regular", n, degree=d, seed=args.seed))
    api_gap, t_api_gap = timed(lambda: spectral_gap(topo.mixing()))
    print(
        f"public API: build {t_build * 1e3:.1f} ms + spectral_gap {t_api_gap * 1e3:.1f} ms"
        f" = {(t_build + t_api_gap) * 1e3:.1f} ms (gap {api_gap:.6f})"
    )

    ring, t_ring = timed(lambda: build("ring", n))
    ring_gap, t_ring_gap = timed(lambda: spectral_gap(ring.mixing()))
    closed = 1 - (1 / 3 + (2 / 3) * math.cos(2 * math.pi / n))
    print(
        f"ring of {n}: build {t_ring * 1e3:.1f} ms + gap {t_ring_gap * 1e3:.1f} ms;"
        f" gap {ring_gap:.6e} vs closed form {closed:.6e} (|diff| {abs(ring_gap - closed):.1e})"
    )


if __name__ == "__main__":
    main()
